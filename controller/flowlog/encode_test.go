package flowlog

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/netseg/netseg/api/flow"
	"github.com/netseg/netseg/api/segment"
)

// fill sets every field reachable from v (pointers allocated, maps given
// two keys) to a value built from s: a field added to flow.Record later is
// then covered by TestAppendRecord without editing it.
func fill(v reflect.Value, s string, n uint64) {
	switch v.Kind() {
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		fill(v.Elem(), s, n)
	case reflect.Struct:
		if v.Type() == reflect.TypeFor[time.Time]() {
			v.Set(reflect.ValueOf(time.Date(2026, 11, 29, 3, 4, 5, int(n), time.UTC)))
			return
		}
		for i := 0; i < v.NumField(); i++ {
			fill(v.Field(i), s+v.Type().Field(i).Name, n+uint64(i)+1)
		}
	case reflect.String:
		v.SetString(s)
	case reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(n % 250)
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		for _, k := range []string{s + "-b", s + "-a"} {
			m.SetMapIndex(reflect.ValueOf(k), reflect.ValueOf(k+"-value"))
		}
		v.Set(m)
	default:
		panic("fill: unhandled kind " + v.Kind().String())
	}
}

func TestAppendRecord(t *testing.T) {
	var full flow.Record
	fill(reflect.ValueOf(&full).Elem(), "x", 1)
	f := false
	var zeroICMP uint8
	odd := "quote\" back\\ tab\t nl\n ctl\x01 html<>& é \u2028 bad\xff"
	records := map[string]*flow.Record{
		"every field": &full,
		"zero":        {},
		"flow": {Schema: flow.Schema, Kind: flow.KindFlow, Report: flow.ReportFinal, Start: time.Unix(1_700_000_000, 123), End: time.Unix(1_700_000_001, 0).UTC(),
			Protocol: "TCP", Src: &flow.Endpoint{IP: "10.88.0.2", Port: 40000, Namespace: "shop", Name: "checkout", Zone: "web", Labels: map[string]string{"app": "checkout", "tier": "front", "a": "b"}},
			Dst:       &flow.Endpoint{IP: "fd00::3"},
			Direction: "egress", Verdict: "allowed", Origin: &segment.Origin{ID: 0, Kind: segment.OriginServiceDependency}, Expected: &f},
		"icmp type 0": {Kind: flow.KindFlow, ICMPType: &zeroICMP, Src: &flow.Endpoint{}, Dst: &flow.Endpoint{Port: 1}},
		"escaping": {Schema: odd, Node: odd, Src: &flow.Endpoint{Name: odd, Labels: map[string]string{odd: odd}},
			Origin: &segment.Origin{Kind: segment.OriginKind(odd), Rule: odd}},
		"lost": {Schema: flow.Schema, Kind: flow.KindLost, Cause: flow.CauseQueueFull, Unit: flow.UnitConnections, Count: 1 << 40},
	}
	for name, r := range records {
		want, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendRecord(nil, r); string(got) != string(want) {
			t.Errorf("%s:\n got %s\nwant %s", name, got, want)
		}
	}
}

// TestAppendStringEachByte holds appendString to encoding/json for every
// byte value alone and inside a plain name: one misclassified byte in its
// table would write invalid or differently escaped JSON.
func TestAppendStringEachByte(t *testing.T) {
	for c := 0; c < 256; c++ {
		for _, s := range []string{string([]byte{byte(c)}), "web-" + string([]byte{byte(c)}) + "-1"} {
			want, err := json.Marshal(s)
			if err != nil {
				t.Fatal(err)
			}
			if got := appendString(nil, s); string(got) != string(want) {
				t.Errorf("byte %#x in %q: got %s, want %s", c, s, got, want)
			}
		}
	}
}

func BenchmarkEncodeRecord(b *testing.B) {
	yes := true
	r := &flow.Record{Schema: flow.Schema, Kind: flow.KindFlow, Report: flow.ReportFinal, Node: "node-1", Start: time.Now(), End: time.Now(),
		Protocol: "TCP", Src: &flow.Endpoint{IP: "10.88.0.2", Port: 40000, Namespace: "shop", Name: "checkout", Zone: "web", Labels: map[string]string{"app": "checkout"}},
		Dst:       &flow.Endpoint{IP: "10.88.0.3", Port: 8443, Namespace: "pay", Name: "payments", Zone: "pci", Labels: map[string]string{"app": "payments"}},
		Direction: "egress", Verdict: "allowed", Origin: &segment.Origin{ID: 12, Kind: segment.OriginServiceDependency, Name: "checkout", Namespace: "shop", Rule: "payments"},
		Expected: &yes, PacketsToDst: 5, BytesToDst: 300, PacketsToSrc: 4, BytesToSrc: 250}
	b.Run("append", func(b *testing.B) {
		b.ReportAllocs()
		var buf []byte
		for b.Loop() {
			buf = appendRecord(buf[:0], r)
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := json.Marshal(r); err != nil {
				b.Fatal(err)
			}
		}
	})
}
