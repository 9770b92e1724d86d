package flowquery

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/netseg/netseg/api/flow"
)

// Table prints records as an aligned table, one per line.
type Table struct {
	tw     *tabwriter.Writer
	alerts bool
	header bool
}

// NewTable prints flow records (alerts false) or alert records to w.
func NewTable(w io.Writer, alerts bool) *Table {
	return &Table{tw: tabwriter.NewWriter(w, 0, 4, 2, ' ', 0), alerts: alerts}
}

// Add prints one record.
func (t *Table) Add(r *flow.Record) {
	if !t.header {
		if t.alerts {
			fmt.Fprintln(t.tw, "FIRST SEEN\tLAST SEEN\tSOURCE\tDESTINATION\tPORT\tVERDICT\tCOUNT\tORIGIN")
		} else {
			fmt.Fprintln(t.tw, "START\tEND\tSOURCE\tDESTINATION\tPORT\tVERDICT\tEXPECTED\tORIGIN\tPACKETS\tBYTES")
		}
		t.header = true
	}
	ts := func(x time.Time) string { return x.Local().Format("2006-01-02 15:04:05") }
	if r.Kind == flow.KindLost {
		fmt.Fprintf(t.tw, "%s\t%s\tLOST %d %s\t(%s)\t\t\t\t\t\t\n", ts(r.Start), ts(r.End), r.Count, r.Unit, r.Cause)
		return
	}
	origin := "-"
	if r.Origin != nil {
		origin = r.Origin.String()
	}
	if t.alerts {
		fmt.Fprintf(t.tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", ts(r.Start), ts(r.End), side(r.Src, false), side(r.Dst, false),
			port(r), r.Verdict, r.Count, origin)
		return
	}
	expected := "no"
	if r.IsExpected() {
		expected = "yes"
	}
	fmt.Fprintf(t.tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d/%d\t%d/%d\n", ts(r.Start), ts(r.End), side(r.Src, true), side(r.Dst, false),
		port(r), r.Verdict, expected, origin, r.PacketsToDst, r.PacketsToSrc, r.BytesToDst, r.BytesToSrc)
}

func side(e *flow.Endpoint, withPort bool) string {
	if e == nil {
		return "-"
	}
	var b strings.Builder
	if e.Name != "" {
		b.WriteString(e.Namespace + "/" + e.Name)
	} else {
		b.WriteString(e.IP)
		if withPort && e.Port != 0 {
			b.WriteString(":" + strconv.Itoa(int(e.Port)))
		}
	}
	if e.Zone != "" {
		b.WriteString(" [" + e.Zone + "]")
	}
	return b.String()
}

func port(r *flow.Record) string {
	if r.ICMPType != nil {
		return fmt.Sprintf("%s type %d", r.Protocol, *r.ICMPType)
	}
	if r.Dst == nil {
		return r.Protocol
	}
	return fmt.Sprintf("%d/%s", r.Dst.Port, r.Protocol)
}

// Flush writes the table out.
func (t *Table) Flush() error { return t.tw.Flush() }
