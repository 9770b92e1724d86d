// Package cmd holds netseg's composition roots: cmd/netseg-agent (the node
// agent) and cmd/netsegctl (the command-line tool). Each main only parses
// flags into a Config, wires packages together and exits with run()'s code.
package cmd
