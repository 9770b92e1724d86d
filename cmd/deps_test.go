package cmd_test

import (
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// The binaries deploy/Dockerfile ships.
var production = []string{
	"github.com/netseg/netseg/cmd/netseg-agent",
	"github.com/netseg/netseg/cmd/netsegctl",
	"github.com/netseg/netseg/cni-plugin",
}

// TestProductionLinksNoTestCode fails when a shipped binary links the
// testing package or anything under e2e/ (the lab, the demo): test
// helpers panic or call os.Exit where a program must return errors, and
// they pull in what only tests need.
func TestProductionLinksNoTestCode(t *testing.T) {
	testCode := regexp.MustCompile(`^testing$|^github\.com/netseg/netseg/e2e(/|$)`)
	for _, bin := range production {
		for _, why := range linked(t, bin, testCode) {
			t.Errorf("%s links test code: %s", bin, why)
		}
	}
}

// TestNetsegctlLinksNoKernelCode fails when netsegctl links a netlink,
// nftables or Prometheus library: it reads policy directories and log
// files and asks the agent over its socket, so it needs none of them
// (the flow log's schema is api/flow, not controller/flowlog).
func TestNetsegctlLinksNoKernelCode(t *testing.T) {
	heavy := regexp.MustCompile(`^github\.com/(google/nftables|vishvananda/|mdlayher/|prometheus/)`)
	for _, why := range linked(t, "github.com/netseg/netseg/cmd/netsegctl", heavy) {
		t.Errorf("netsegctl links %s", why)
	}
}

// linked lists the packages matching re that bin links, each with the
// import chain that brings it in ("a -> b -> c"); packages that only
// other matches import are left out.
func linked(t *testing.T, bin string, re *regexp.Regexp) []string {
	t.Helper()
	goTool, err := exec.LookPath("go") // go test puts its own go first on PATH
	if err != nil {
		t.Skip("no go tool:", err)
	}
	out, err := exec.Command(goTool, "list", "-deps", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, bin).Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			t.Fatalf("go list -deps %s: %v\n%s", bin, err, ee.Stderr)
		}
		t.Fatalf("go list -deps %s: %v", bin, err)
	}
	imports := map[string][]string{}
	var hits []string
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		imports[f[0]] = f[1:]
		if re.MatchString(f[0]) {
			hits = append(hits, f[0])
		}
	}
	var whys []string
	for _, hit := range hits {
		c := chain(imports, bin, hit)
		if len(c) > 1 && re.MatchString(c[len(c)-2]) {
			continue // brought in by another hit: name the way in once
		}
		whys = append(whys, strings.Join(c, " -> "))
	}
	return whys
}

// chain is a shortest import path from one package to another.
func chain(imports map[string][]string, from, to string) []string {
	prev := map[string]string{from: ""}
	queue := []string{from}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if p == to {
			var path []string
			for ; p != ""; p = prev[p] {
				path = append([]string{p}, path...)
			}
			return path
		}
		for _, q := range imports[p] {
			if _, seen := prev[q]; !seen {
				prev[q] = p
				queue = append(queue, q)
			}
		}
	}
	return []string{to}
}
