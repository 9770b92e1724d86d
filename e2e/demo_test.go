package e2e_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/netseg/netseg/e2e/demo"
	"github.com/netseg/netseg/e2e/lab"
)

// TestDemo runs the README's demo for one round and checks what it shows:
// every scripted connection's traffic agrees with the decision, flow
// records and alerts arrive, and nothing is left behind.
func TestDemo(t *testing.T) {
	before, err := lab.Namespaces()
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := demo.Run(ctx, demo.Options{PolicyDir: "../examples", BinDir: binDir, Rounds: 1, Interval: 200 * time.Millisecond, Out: &out}); err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	text := out.String()
	for _, want := range []string{"passed   allowed    expected", "blocked  denied", "passed   would-deny", "passed   allowed    unexpected",
		"flow>  shop/checkout [web]", "alert> default/batch [unzoned]", "== cleaning up"} {
		if !strings.Contains(text, want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	if strings.Contains(text, "disagrees") {
		t.Errorf("traffic disagreed with a decision")
	}
	after, err := lab.Namespaces()
	if err != nil {
		t.Fatal(err)
	}
	if left := own(after); len(left) > len(own(before)) {
		t.Errorf("the demo left namespaces: %v", left)
	}
	if t.Failed() {
		t.Logf("demo output:\n%s", text)
	}
}

// own keeps the lab namespaces this test process made.
func own(names []string) []string {
	prefix := fmt.Sprintf("%s%d-", lab.Prefix, os.Getpid())
	var out []string
	for _, n := range names {
		if strings.HasPrefix(n, prefix) {
			out = append(out, n)
		}
	}
	return out
}
