package main

import (
	"flag"
	"fmt"
	"io"

	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/controller/policy"
	"github.com/netseg/netseg/controller/policyfile"
)

func runValidate(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("validate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("f", "", "policy directory: .yaml/.yml files of Zone, ZonePolicy, ServiceDependency and Namespace")
	var unzoned segment.Action
	fs.TextVar(&unzoned, "unzoned-default", segment.Allow, "default `action` of the unzoned zone (Allow or Deny)")
	budget := fs.Int("entry-budget", policy.DefaultEntryBudget, "dependency entries one namespace may hold, one per port range each lists (as the agent's --entry-budget)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: netsegctl validate -f DIR\n\n"+
			"Checks a policy directory as the API server and the compiler would. Prints every\n"+
			"error and warning, one per line, naming file, document and field; exits 1 on errors.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return exitParse(err)
	}
	if *dir == "" || fs.NArg() > 0 {
		fs.Usage()
		return 2
	}
	pol, loadErr := policyfile.Load(*dir)
	c := policy.Compile(pol.Input(policy.Config{UnzonedDefault: unzoned, EntryBudget: *budget}, nil, nil))
	var errs []string
	for _, e := range flatten(loadErr) {
		errs = append(errs, e.Error())
	}
	for _, p := range c.Errors {
		errs = append(errs, pol.Locate(p))
	}
	for _, e := range errs {
		fmt.Fprintln(stderr, "error:", e)
	}
	for _, w := range c.Warnings {
		fmt.Fprintln(stderr, "warning:", pol.Locate(w))
	}
	s := pol.Summary()
	summary := fmt.Sprintf("%d zones, %d zone policies (%d rules), %d service dependencies (%d entries), %d namespaces; %s",
		s.Zones, s.ZonePolicies, s.Rules, s.ServiceDependencies, s.Dependencies, s.Namespaces, plural(len(c.Warnings), "warning"))
	if len(errs) > 0 {
		fmt.Fprintf(stderr, "invalid: %s; loaded %s\n", plural(len(errs), "error"), summary)
		return 1
	}
	fmt.Fprintln(stdout, "ok:", summary)
	return 0
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}

func exitParse(err error) int {
	if err == flag.ErrHelp {
		return 0
	}
	return 2
}
