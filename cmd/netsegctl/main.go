// Command netsegctl is netseg's command-line tool.
package main

import (
	"fmt"
	"os"
)

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	fmt.Fprintln(os.Stderr, "netsegctl: no commands are available in this version yet")
	return 2
}
