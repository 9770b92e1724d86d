package flow_test

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/netseg/netseg/api/flow"
)

// TestDocExamples holds the types to the schema's documentation: every
// example record in docs/flow-log.md decodes and encodes back to the same
// bytes (field names, order, omitempty).
func TestDocExamples(t *testing.T) {
	doc, err := os.ReadFile("../../docs/flow-log.md")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for line := range strings.Lines(string(doc)) {
		line = strings.TrimSuffix(line, "\n")
		if !strings.HasPrefix(line, `{"schema":`) {
			continue
		}
		n++
		r, err := flow.Decode([]byte(line))
		if err != nil {
			t.Errorf("decode %s: %v", line, err)
			continue
		}
		got, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, []byte(line)) {
			t.Errorf("round trip changed the record:\n doc: %s\n got: %s", line, got)
		}
	}
	if n == 0 {
		t.Fatal("docs/flow-log.md has no example records")
	}
}

func TestDecode(t *testing.T) {
	for _, tc := range []struct {
		line string
		ok   bool
	}{
		{`{"schema":"netseg.flow/v1","kind":"lost","start":"2026-01-02T03:04:00Z","end":"2026-01-02T03:05:00Z","count":2,"cause":"queue-full","unit":"connections"}`, true},
		{`{"schema":"netseg.flow/v1.1","kind":"flow","start":"2026-01-02T03:04:00Z","end":"2026-01-02T03:05:00Z","newField":1}`, true},
		{`{"schema":"netseg.flow/v2","kind":"flow","start":"2026-01-02T03:04:00Z","end":"2026-01-02T03:05:00Z"}`, false},
		{`{"kind":"flow"}`, false},
		{`not json`, false},
	} {
		_, err := flow.Decode([]byte(tc.line))
		if (err == nil) != tc.ok {
			t.Errorf("Decode(%s) = %v, want ok %v", tc.line, err, tc.ok)
		}
	}
}
