package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/netseg/netseg/api/agent"
	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/controller/explain"
	"github.com/netseg/netseg/controller/policy"
	"github.com/netseg/netseg/controller/policyfile"
)

func runExplain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("explain", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("policy-dir", "", "policy directory")
	from := fs.String("from", "", "source: NAMESPACE/NAME, an IP address or a CIDR")
	fromLabels := fs.String("from-labels", "", "source endpoint's labels: k=v,k2=v2")
	to := fs.String("to", "", "destination: NAMESPACE/NAME, an IP address or a CIDR")
	toLabels := fs.String("to-labels", "", "destination endpoint's labels: k=v,k2=v2")
	port := fs.String("port", "", "destination port and protocol: 443/TCP, 53/UDP, 3868/SCTP or ICMP")
	output := fs.String("o", "text", "output format: text or json")
	var unzoned segment.Action
	fs.TextVar(&unzoned, "unzoned-default", segment.Allow, "default `action` of the unzoned zone (Allow or Deny)")
	budget := fs.Int("entry-budget", policy.DefaultEntryBudget, "dependency entries one namespace may hold, one per port range each lists (as the agent's --entry-budget)")
	socket := fs.String("socket", agent.DefaultSocket, "the running agent's socket (live form, without --policy-dir)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: netsegctl explain --policy-dir DIR --from PEER --to PEER --port PORT [-o json]\n"+
			"       netsegctl explain --from NS/NAME --to NS/NAME --port PORT [-o json]   (asks the running agent)\n\n"+
			"Explains the decision for one connection: verdict (allowed, denied, would-deny),\n"+
			"whether it is expected, the rule or default that decided, and the zones.\n"+
			"The live form uses the agent's policy and its registered endpoints (with their labels).\n"+
			"Example: netsegctl explain --policy-dir examples --from shop/checkout --from-labels app=checkout \\\n"+
			"           --to 203.0.113.10 --port 443/TCP\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return exitParse(err)
	}
	if *port == "" || *from == "" || *to == "" || fs.NArg() > 0 || (*output != "text" && *output != "json") {
		fs.Usage()
		return 2
	}
	if *dir == "" {
		return explainLive(*socket, *from, *to, *port, *output, stdout, stderr)
	}
	src, err := explain.ParsePeer(*from, *fromLabels)
	if err != nil {
		fmt.Fprintln(stderr, "netsegctl explain: --from:", err)
		return 2
	}
	dst, err := explain.ParsePeer(*to, *toLabels)
	if err != nil {
		fmt.Fprintln(stderr, "netsegctl explain: --to:", err)
		return 2
	}
	p, proto, err := explain.ParsePort(*port)
	if err != nil {
		fmt.Fprintln(stderr, "netsegctl explain: --port:", err)
		return 2
	}
	pol, err := policyfile.Load(*dir)
	if err != nil {
		for _, e := range flatten(err) {
			fmt.Fprintln(stderr, "error:", e)
		}
		return 1
	}
	c := policy.Compile(pol.Input(policy.Config{UnzonedDefault: unzoned, EntryBudget: *budget}, nil, nil))
	r := explain.Explain(c, src, dst, p, proto)
	if *output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(r); err != nil {
			fmt.Fprintln(stderr, "netsegctl explain:", err)
			return 1
		}
		return 0
	}
	fmt.Fprintln(stdout, r.Sentence())
	return 0
}

// explainLive asks the running agent.
func explainLive(socket, from, to, port, output string, stdout, stderr io.Writer) int {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := agent.Call(ctx, socket, agent.Request{Op: agent.OpExplain, Explain: &agent.Explain{From: from, To: to, Port: port}})
	if err != nil {
		fmt.Fprintln(stderr, "netsegctl explain:", err)
		return 1
	}
	var r explain.Result
	if err := json.Unmarshal(resp.Explanation, &r); err != nil {
		fmt.Fprintln(stderr, "netsegctl explain: the agent's answer:", err)
		return 1
	}
	if output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(r)
		return 0
	}
	fmt.Fprintln(stdout, r.Sentence())
	return 0
}
