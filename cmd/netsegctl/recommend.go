package main

import (
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/netseg/netseg/controller/flowquery"
	"github.com/netseg/netseg/controller/policy"
	"github.com/netseg/netseg/controller/policyfile"
)

func runRecommend(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("recommend", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("f", "/var/log/netseg/flows.log", "flow log (rotated files FILE.1..FILE.N are read too)")
	policyDir := fs.String("policy-dir", "", "current policy: flows it already expects are skipped")
	label := fs.String("label", "app", "the label that names a workload")
	var ff filterFlags
	ff.register(fs, false)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: netsegctl recommend -f FILE --since 24h [--policy-dir DIR]\n\n"+
			"Writes ServiceDependency YAML that would make the unexpected allowed flows expected:\n"+
			"one object per client workload, entries by destination workload and ports.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return exitParse(err)
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return 2
	}
	now := time.Now()
	f, err := ff.filter(now)
	if err != nil {
		fmt.Fprintf(stderr, "netsegctl recommend: %v\n", err)
		return 2
	}
	f.Verdict, f.Unexpected = "allowed", true
	rc := &flowquery.Recommender{Label: *label}
	if *policyDir != "" {
		pol, err := policyfile.Load(*policyDir)
		if err != nil {
			fmt.Fprintf(stderr, "netsegctl recommend: %v\n", err)
			return 1
		}
		rc.Covered = flowquery.CoveredBy(policy.Compile(pol.Input(policy.Config{}, nil, nil)))
	}
	if err := flowquery.Read(*file, f, rc.Add, nil); err != nil {
		fmt.Fprintf(stderr, "netsegctl recommend: %v\n", err)
		return 1
	}
	if rc.Flows() == 0 {
		fmt.Fprintln(stderr, "netsegctl recommend: no unexpected allowed flows")
		return 0
	}
	header := fmt.Sprintf("Recommended by netsegctl recommend from %d unexpected allowed flows in %s.\nReview before applying: every entry allows what was seen, nothing less.", rc.Flows(), *file)
	if err := rc.Write(stdout, header); err != nil {
		fmt.Fprintf(stderr, "netsegctl recommend: %v\n", err)
		return 1
	}
	return 0
}
