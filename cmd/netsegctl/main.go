// Command netsegctl is netseg's command-line tool: it validates policy
// directories, explains decisions, and reads the flow and alert logs.
package main

import (
	"fmt"
	"io"
	"os"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

const usage = `netsegctl: inspect netseg policy.

Usage:
  netsegctl validate -f DIR
  netsegctl explain --policy-dir DIR --from PEER --to PEER --port PORT [-o json]
  netsegctl explain --from NS/NAME --to NS/NAME --port PORT [-o json]   (live, via the agent)
  netsegctl status [--socket PATH]      the running agent's state
  netsegctl endpoints [--socket PATH]   endpoints registered with the agent
  netsegctl flows [-f FILE] [--follow] [--from X] [--to X] [--port P[/PROTO]] [--verdict V] [--unexpected] [--since DUR|TIME] [--until TIME] [-o json|table]
  netsegctl alerts [-f FILE] [--follow] [filters as for flows] [-o json|table]
  netsegctl recommend -f FILE --since 24h [--policy-dir DIR]

Run "netsegctl COMMAND --help" for a command's flags.
`

// run executes one command and returns the process exit code: 0 on
// success, 1 when the command found problems or failed, 2 on bad usage.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "validate":
		return runValidate(args[1:], stdout, stderr)
	case "explain":
		return runExplain(args[1:], stdout, stderr)
	case "status":
		return runStatus(args[1:], stdout, stderr)
	case "endpoints":
		return runEndpoints(args[1:], stdout, stderr)
	case "flows":
		return runFlows(args[1:], stdout, stderr)
	case "alerts":
		return runAlerts(args[1:], stdout, stderr)
	case "recommend":
		return runRecommend(args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "netsegctl: unknown command %q\n\n%s", args[0], usage)
	return 2
}

// flatten lists the leaves of joined errors.
func flatten(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return []error{err}
}
