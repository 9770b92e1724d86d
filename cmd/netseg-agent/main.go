// Command netseg-agent is netseg's node agent. It joins the policy compiler,
// the nftables dataplane and the CNI plugin's socket into one daemon.
package main

import (
	"fmt"
	"os"
)

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	fmt.Fprintln(os.Stderr, "netseg-agent: the node agent is not available in this version yet")
	return 2
}
