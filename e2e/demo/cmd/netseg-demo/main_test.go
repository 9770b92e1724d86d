package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestUsage covers the flags without running the demo (which needs root):
// every case stops before demo.Run.
func TestUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		in   []string // expected in stdout+stderr
	}{
		{[]string{"--help"}, 0, []string{"Usage: netseg-demo [--policy-dir DIR] [--rounds N] [--interval D]",
			"Runs netseg on a lab node", "-policy-dir", "-bin-dir", "-rounds", "-interval"}},
		{[]string{"--rounds", "-1"}, 2, []string{"Usage: netseg-demo"}},
		{[]string{"extra"}, 2, []string{"Usage: netseg-demo"}},
		{[]string{"--interval", "soon"}, 2, []string{`invalid value "soon" for flag -interval`}},
		{[]string{"--frobnicate"}, 2, []string{"flag provided but not defined: -frobnicate"}},
	} {
		var out, errOut bytes.Buffer
		code := run(tc.args, &out, &errOut)
		for _, want := range tc.in {
			if code != tc.code || !strings.Contains(out.String()+errOut.String(), want) {
				t.Errorf("%v: exit %d, want %d; output lacks %q:\n%s%s", tc.args, code, tc.code, want, out.String(), errOut.String())
			}
		}
	}
}
