// Package flowquery reads flow and alert logs (api/flow's JSON lines, as
// controller/flowlog writes them, rotated files included), filters them
// for netsegctl flows and alerts, prints them as tables, and recommends
// ServiceDependencies that would make unexpected allowed flows expected.
// It does not import controller/flowlog: a reader of the logs links no
// kernel or metrics code.
package flowquery

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/netseg/netseg/api/flow"
)

// Peer matches one side of a connection: "namespace/name", "zone:NAME",
// an IP or a CIDR.
type Peer struct {
	ns, name, zone string
	prefix         netip.Prefix
}

// ParsePeer parses a peer filter.
func ParsePeer(s string) (Peer, error) {
	switch {
	case strings.HasPrefix(s, "zone:"):
		if s == "zone:" {
			return Peer{}, fmt.Errorf("peer %q: empty zone", s)
		}
		return Peer{zone: strings.TrimPrefix(s, "zone:")}, nil
	case strings.Contains(s, "/"):
		if p, err := netip.ParsePrefix(s); err == nil {
			return Peer{prefix: p.Masked()}, nil
		}
		ns, name, _ := strings.Cut(s, "/")
		if ns == "" || name == "" {
			return Peer{}, fmt.Errorf("peer %q: want namespace/name, zone:NAME, an IP or a CIDR", s)
		}
		return Peer{ns: ns, name: name}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return Peer{}, fmt.Errorf("peer %q: want namespace/name, zone:NAME, an IP or a CIDR", s)
	}
	return Peer{prefix: netip.PrefixFrom(a, a.BitLen())}, nil
}

func (p Peer) match(e *flow.Endpoint) bool {
	if e == nil {
		return false
	}
	switch {
	case p.zone != "":
		return e.Zone == p.zone
	case p.name != "":
		return e.Namespace == p.ns && e.Name == p.name
	}
	a, err := netip.ParseAddr(e.IP)
	return err == nil && p.prefix.Contains(a.Unmap())
}

// Filter selects records; zero fields match everything.
type Filter struct {
	From, To   *Peer
	Port       uint16
	Protocol   string // upper case; "" any
	Verdict    string
	Unexpected bool
	Since      time.Time
	Until      time.Time
}

// ParsePort parses "P" or "P/PROTO".
func ParsePort(s string) (uint16, string, error) {
	num, proto, _ := strings.Cut(s, "/")
	n, err := strconv.ParseUint(num, 10, 16)
	if err != nil || n == 0 {
		return 0, "", fmt.Errorf("port %q: want PORT or PORT/PROTO", s)
	}
	return uint16(n), strings.ToUpper(proto), nil
}

// ParseTime parses an RFC 3339 time, or a duration meaning that long
// before now.
func ParseTime(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("time %q: want a duration (24h) or RFC 3339 (2026-01-02T15:04:05Z)", s)
	}
	return t, nil
}

// Match reports whether r passes the filter. Lost records pass only the
// time filters (they concern every flow).
func (f *Filter) Match(r *flow.Record) bool {
	if !f.Since.IsZero() && r.End.Before(f.Since) || !f.Until.IsZero() && r.Start.After(f.Until) {
		return false
	}
	if r.Kind == flow.KindLost {
		return f.From == nil && f.To == nil && f.Port == 0 && f.Protocol == "" && f.Verdict == "" && !f.Unexpected
	}
	switch {
	case f.From != nil && !f.From.match(r.Src),
		f.To != nil && !f.To.match(r.Dst),
		f.Port != 0 && (r.Dst == nil || r.Dst.Port != f.Port),
		f.Protocol != "" && !strings.EqualFold(r.Protocol, f.Protocol),
		f.Verdict != "" && r.Verdict != f.Verdict,
		f.Unexpected && r.IsExpected():
		return false
	}
	return true
}

// Files lists a log and its rotated files, oldest first: FILE.N .. FILE.1,
// FILE (those that exist).
func Files(path string) []string {
	var rotated []string
	for i := 1; ; i++ {
		name := fmt.Sprintf("%s.%d", path, i)
		if _, err := os.Stat(name); err != nil {
			break
		}
		rotated = append([]string{name}, rotated...)
	}
	return append(rotated, path)
}

// Read calls fn for every record of the log and its rotated files, oldest
// first, that passes f. Lines that are not records of a known schema
// version are reported to bad (may be nil) and skipped.
func Read(path string, f *Filter, fn func(*flow.Record), bad func(error)) error {
	for _, name := range Files(path) {
		file, err := os.Open(name)
		if err != nil {
			return fmt.Errorf("open flow log: %w", err)
		}
		_, err = scan(file, name, f, fn, bad)
		file.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// scan reads whole lines from r; it returns the bytes consumed (up to the
// last newline).
func scan(r io.Reader, name string, f *Filter, fn func(*flow.Record), bad func(error)) (int64, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	var n int64
	line := 0
	for {
		b, err := br.ReadBytes('\n')
		if err == io.EOF {
			return n, nil // a partial last line is read again later
		}
		if err != nil {
			return n, fmt.Errorf("read %s: %w", name, err)
		}
		n += int64(len(b))
		line++
		rec, err := flow.Decode(b)
		if err != nil {
			if bad != nil {
				bad(fmt.Errorf("%s:%d: not a netseg.flow/v1 record", name, line))
			}
			continue
		}
		if f.Match(&rec) {
			fn(&rec)
		}
	}
}

// Follow reads new records appended to path until ctx ends, polling every
// interval; it notices rotation (the file replaced or truncated) and
// continues with the new file from its start. Without from it begins at the
// end of the current file.
func Follow(ctx context.Context, path string, f *Filter, interval time.Duration, fn func(*flow.Record), bad func(error)) error {
	var file *os.File
	var offset int64
	open := func(fromEnd bool) error {
		fl, err := os.Open(path)
		if err != nil {
			return err
		}
		offset = 0
		if fromEnd {
			if offset, err = fl.Seek(0, io.SeekEnd); err != nil {
				fl.Close()
				return err
			}
		}
		file = fl
		return nil
	}
	if err := open(true); err != nil {
		return fmt.Errorf("follow flow log: %w", err)
	}
	defer func() { file.Close() }()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if _, err := file.Seek(offset, io.SeekStart); err != nil {
			return fmt.Errorf("follow flow log: %w", err)
		}
		n, err := scan(file, path, f, fn, bad)
		if err != nil {
			return err
		}
		offset += n
		// Rotated: the path names another file, or this one shrank.
		cur, err1 := file.Stat()
		now, err2 := os.Stat(path)
		if err1 == nil && err2 == nil && (!os.SameFile(cur, now) || now.Size() < offset) {
			if os.SameFile(cur, now) {
				offset = 0
			} else {
				// Finish the old file first: records written before the rename.
				if _, err := file.Seek(offset, io.SeekStart); err == nil {
					_, _ = scan(file, path, f, fn, bad)
				}
				file.Close()
				if err := open(false); err != nil {
					return fmt.Errorf("follow flow log: %w", err)
				}
				continue
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
