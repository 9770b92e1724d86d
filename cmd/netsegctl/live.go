package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/netseg/netseg/api/agent"
)

// callAgent runs one request against the agent's socket.
func callAgent(socket string, req agent.Request) (*agent.Response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return agent.Call(ctx, socket, req)
}

func liveFlags(name, usage string, stderr io.Writer) (*flag.FlagSet, *string, *string) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := fs.String("socket", agent.DefaultSocket, "the running agent's socket")
	output := fs.String("o", "text", "output format: text or json")
	fs.Usage = func() { fmt.Fprint(fs.Output(), usage); fs.PrintDefaults() }
	return fs, socket, output
}

func runStatus(args []string, stdout, stderr io.Writer) int {
	fs, socket, output := liveFlags("status", "Usage: netsegctl status [--socket PATH] [-o json]\n\n"+
		"Shows the running agent's mode, policy generation and source, the policy error in force\n"+
		"(an invalid edit keeps the last good policy), endpoints, the last sync, and the state of\n"+
		"each background loop (ok, retrying, stopped, off). Exits 1 unless ready and error-free.\n\n", stderr)
	if err := fs.Parse(args); err != nil {
		return exitParse(err)
	}
	resp, err := callAgent(*socket, agent.Request{Op: agent.OpStatus})
	if err != nil {
		fmt.Fprintln(stderr, "netsegctl status:", err)
		return 1
	}
	st := resp.Status
	if st == nil {
		fmt.Fprintln(stderr, "netsegctl status: the agent's answer has no status")
		return 1
	}
	if *output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(st)
		return 0
	}
	fmt.Fprintf(stdout, "mode:              %s\n", st.Mode)
	fmt.Fprintf(stdout, "ready:             %v\n", st.Ready)
	fmt.Fprintf(stdout, "policy:            %s (generation %d)\n", st.PolicySource, st.PolicyGeneration)
	if st.LastError != "" {
		fmt.Fprintf(stdout, "policy error:      %s\n                   (the last good policy stays in force)\n", st.LastError)
	}
	fmt.Fprintf(stdout, "endpoints:         %d\n", st.Endpoints)
	fmt.Fprintf(stdout, "last sync:         %s\n", st.LastSync.Format(time.RFC3339))
	if st.LastSyncError != "" {
		fmt.Fprintf(stdout, "last sync error:   %s\n", st.LastSyncError)
	}
	for _, w := range st.Warnings {
		fmt.Fprintf(stdout, "warning:           %s\n", w)
	}
	if len(st.Loops) > 0 {
		fmt.Fprintln(stdout, "loops:")
		for _, l := range st.Loops {
			fmt.Fprintf(stdout, "  %-22s %-8s %s\n", l.Name, l.State, l.Error)
		}
	}
	if !st.Ready || st.LastError != "" || st.LastSyncError != "" {
		return 1
	}
	return 0
}

func runEndpoints(args []string, stdout, stderr io.Writer) int {
	fs, socket, output := liveFlags("endpoints", "Usage: netsegctl endpoints [--socket PATH] [-o json]\n\n"+
		"Lists the endpoints registered with the running agent: namespace/name, addresses,\n"+
		"host interface, zone and labels.\n\n", stderr)
	if err := fs.Parse(args); err != nil {
		return exitParse(err)
	}
	resp, err := callAgent(*socket, agent.Request{Op: agent.OpList})
	if err != nil {
		fmt.Fprintln(stderr, "netsegctl endpoints:", err)
		return 1
	}
	if *output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(resp.Endpoints)
		return 0
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ENDPOINT\tIPS\tINTERFACE\tZONE\tLABELS")
	for _, ep := range resp.Endpoints {
		fmt.Fprintf(tw, "%s/%s\t%s\t%s\t%s\t%s\n", ep.Namespace, ep.Name, strings.Join(ep.IPs, ","), ep.HostIface, ep.Zone, labelString(ep.Labels))
	}
	_ = tw.Flush()
	return 0
}

func labelString(l map[string]string) string {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, k+"="+l[k])
	}
	return strings.Join(parts, ",")
}
