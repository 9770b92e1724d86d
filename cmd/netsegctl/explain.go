package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"

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
	unzoned := fs.String("unzoned-default", "Allow", "default action of the unzoned zone (Allow or Deny)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: netsegctl explain --policy-dir DIR --from PEER --to PEER --port PORT [-o json]\n\n"+
			"Explains the decision for one connection: verdict (allowed, denied, would-deny),\n"+
			"whether it is expected, the rule or default that decided, and the zones.\n"+
			"Example: netsegctl explain --policy-dir examples --from shop/checkout --from-labels app=checkout \\\n"+
			"           --to 203.0.113.10 --port 443/TCP\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return exitParse(err)
	}
	if *dir == "" || *port == "" || fs.NArg() > 0 || (*output != "text" && *output != "json") {
		fs.Usage()
		return 2
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
	c := policy.Compile(pol.Input(policy.Config{UnzonedDefault: policy.Action(*unzoned)}, nil, nil))
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
