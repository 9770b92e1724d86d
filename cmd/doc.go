// Package cmd holds netseg's composition roots: cmd/netseg-agent (the node
// agent) and cmd/netsegctl (the command-line tool). Each main only parses
// flags into a Config, wires packages together and exits with run()'s code.
// The tests here hold the shipped binaries (these two and cni-plugin) to
// linking no test code (the testing package, e2e/) and netsegctl to no
// netlink, nftables or Prometheus library; the demo is e2e's own program
// (e2e/demo/cmd/netseg-demo).
package cmd
