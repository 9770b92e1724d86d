package flowlog

import (
	"encoding/json"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/netseg/netseg/api/flow"
	"github.com/netseg/netseg/api/segment"
)

// appendRecord appends r as a JSON object: exactly the bytes
// encoding/json.Marshal makes of it (field order, omitempty, escaping,
// RFC 3339 times with nanoseconds; TestAppendRecord holds it to that),
// without reflection and without allocating. At ten thousand connections
// a second the reflective encoder was the pipeline's largest cost.
func appendRecord(b []byte, r *flow.Record) []byte {
	b = append(b, `{"schema":`...)
	b = appendString(b, r.Schema)
	b = append(b, `,"kind":`...)
	b = appendString(b, r.Kind)
	b = append(b, `,"start":`...)
	b = appendTime(b, r.Start)
	b = append(b, `,"end":`...)
	b = appendTime(b, r.End)
	b = appendStringField(b, "node", r.Node)
	b = appendStringField(b, "report", r.Report)
	if r.ConnStart != nil {
		b = append(b, `,"connStart":`...)
		b = appendTime(b, *r.ConnStart)
	}
	b = appendStringField(b, "protocol", r.Protocol)
	if r.Src != nil {
		b = append(b, `,"src":`...)
		b = appendEndpoint(b, r.Src)
	}
	if r.Dst != nil {
		b = append(b, `,"dst":`...)
		b = appendEndpoint(b, r.Dst)
	}
	if r.ICMPType != nil {
		b = append(b, `,"icmpType":`...)
		b = strconv.AppendUint(b, uint64(*r.ICMPType), 10)
	}
	b = appendStringField(b, "direction", r.Direction)
	b = appendStringField(b, "verdict", r.Verdict)
	if r.Origin != nil {
		b = append(b, `,"origin":`...)
		b = appendOrigin(b, r.Origin)
	}
	if r.Expected != nil {
		b = append(b, `,"expected":`...)
		b = strconv.AppendBool(b, *r.Expected)
	}
	b = appendUintField(b, "packetsToDst", r.PacketsToDst)
	b = appendUintField(b, "bytesToDst", r.BytesToDst)
	b = appendUintField(b, "packetsToSrc", r.PacketsToSrc)
	b = appendUintField(b, "bytesToSrc", r.BytesToSrc)
	if r.Scan != nil {
		b = append(b, `,"scan":{"keys":`...)
		b = strconv.AppendUint(b, r.Scan.Keys, 10)
		b = append(b, '}')
	}
	b = appendUintField(b, "count", r.Count)
	b = appendStringField(b, "cause", r.Cause)
	b = appendStringField(b, "unit", r.Unit)
	return append(b, '}')
}

func appendEndpoint(b []byte, e *flow.Endpoint) []byte {
	b = append(b, '{')
	n := len(b)
	b = appendStringField(b, "ip", e.IP)
	b = appendUintField(b, "port", uint64(e.Port))
	b = appendStringField(b, "namespace", e.Namespace)
	b = appendStringField(b, "name", e.Name)
	b = appendStringField(b, "zone", e.Zone)
	if len(e.Labels) > 0 {
		b = append(b, `,"labels":{`...)
		var keys [8]string
		sorted := keys[:0]
		for k := range e.Labels {
			sorted = append(sorted, k)
		}
		slices.Sort(sorted)
		for i, k := range sorted {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, k)
			b = append(b, ':')
			b = appendString(b, e.Labels[k])
		}
		b = append(b, '}')
	}
	return closeObject(b, n)
}

func appendOrigin(b []byte, o *segment.Origin) []byte {
	b = append(b, `{"id":`...)
	b = strconv.AppendUint(b, uint64(o.ID), 10)
	b = append(b, `,"kind":`...)
	b = appendString(b, string(o.Kind))
	b = appendStringField(b, "name", o.Name)
	b = appendStringField(b, "namespace", o.Namespace)
	b = appendStringField(b, "rule", o.Rule)
	b = appendStringField(b, "fromZone", o.FromZone)
	b = appendStringField(b, "toZone", o.ToZone)
	return append(b, '}')
}

// closeObject ends an object whose fields were all written with a leading
// comma: the first one's comma (just after the brace at n-1) goes.
func closeObject(b []byte, n int) []byte {
	if len(b) > n {
		b = append(b[:n], b[n+1:]...)
	}
	return append(b, '}')
}

// appendStringField appends `,"key":"v"` unless v is empty (omitempty).
func appendStringField(b []byte, key, v string) []byte {
	if v == "" {
		return b
	}
	b = append(b, ',', '"')
	b = append(b, key...)
	b = append(b, '"', ':')
	return appendString(b, v)
}

// appendUintField appends `,"key":v` unless v is zero (omitempty).
func appendUintField(b []byte, key string, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = append(b, ',', '"')
	b = append(b, key...)
	b = append(b, '"', ':')
	return strconv.AppendUint(b, v, 10)
}

func appendTime(b []byte, t time.Time) []byte {
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b, '"')
}

// plain marks the bytes appendString copies as they are: printable ASCII
// other than those encoding/json escapes (quote, backslash, and the HTML
// characters). A table lookup per byte instead of seven comparisons, on
// the encoder's hottest loop.
var plain = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = true
	}
	for _, c := range []byte{'"', '\\', '<', '>', '&'} {
		t[c] = false
	}
	return t
}()

// appendString appends s quoted. Names, labels and addresses are plain
// ASCII and are copied; anything encoding/json would escape (quotes,
// backslashes, control and HTML characters, other than ASCII) goes
// through encoding/json itself.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if !plain[s[i]] {
			q, _ := json.Marshal(s) // a string always encodes
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
