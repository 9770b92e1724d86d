package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/netseg/netseg/api/flow"
	"github.com/netseg/netseg/controller/flowquery"
)

// filterFlags are the record filters shared by flows, alerts and recommend.
type filterFlags struct {
	from, to, port, verdict, since, until string
	unexpected                            bool
}

func (ff *filterFlags) register(fs *flag.FlagSet, withUnexpected bool) {
	fs.StringVar(&ff.from, "from", "", "source: namespace/name, zone:NAME, an IP or a CIDR")
	fs.StringVar(&ff.to, "to", "", "destination: namespace/name, zone:NAME, an IP or a CIDR")
	fs.StringVar(&ff.port, "port", "", "destination port, PORT or PORT/PROTO")
	fs.StringVar(&ff.verdict, "verdict", "", "allowed, denied or would-deny")
	fs.StringVar(&ff.since, "since", "", "records that end after this: a duration before now (1h) or an RFC 3339 time")
	fs.StringVar(&ff.until, "until", "", "records that start before this RFC 3339 time (or a duration before now)")
	if withUnexpected {
		fs.BoolVar(&ff.unexpected, "unexpected", false, "only unexpected records")
	}
}

func (ff *filterFlags) filter(now time.Time) (*flowquery.Filter, error) {
	f := &flowquery.Filter{Unexpected: ff.unexpected}
	for _, p := range []struct {
		s   string
		dst **flowquery.Peer
	}{{ff.from, &f.From}, {ff.to, &f.To}} {
		if p.s != "" {
			peer, err := flowquery.ParsePeer(p.s)
			if err != nil {
				return nil, err
			}
			*p.dst = &peer
		}
	}
	var err error
	if ff.port != "" {
		if f.Port, f.Protocol, err = flowquery.ParsePort(ff.port); err != nil {
			return nil, err
		}
	}
	switch ff.verdict {
	case "", "allowed", "denied", "would-deny":
		f.Verdict = ff.verdict
	default:
		return nil, fmt.Errorf("verdict %q: want allowed, denied or would-deny", ff.verdict)
	}
	if ff.since != "" {
		if f.Since, err = flowquery.ParseTime(ff.since, now); err != nil {
			return nil, err
		}
	}
	if ff.until != "" {
		if f.Until, err = flowquery.ParseTime(ff.until, now); err != nil {
			return nil, err
		}
	}
	return f, nil
}

// followCtx ends the --follow loop; tests replace it.
var followCtx = func() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt)
}

func runFlows(args []string, stdout, stderr io.Writer) int {
	return runRecords("flows", args, stdout, stderr)
}

func runAlerts(args []string, stdout, stderr io.Writer) int {
	return runRecords("alerts", args, stdout, stderr)
}

// runRecords is netsegctl flows and netsegctl alerts.
func runRecords(cmd string, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	defFile := "/var/log/netseg/flows.log"
	if cmd == "alerts" {
		defFile = "/var/log/netseg/alerts.log"
	}
	file := fs.String("f", defFile, "log file (rotated files FILE.1..FILE.N are read too)")
	follow := fs.Bool("follow", false, "keep printing records as they are written (follows rotation)")
	out := fs.String("o", "table", "output: table or json (the records, one per line)")
	var ff filterFlags
	ff.register(fs, cmd == "flows")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: netsegctl %s [-f FILE] [--follow] [--from X] [--to X] [--port P[/PROTO]] [--verdict V] [--since DUR|TIME] [--until TIME] [-o json|table]\n\n", cmd)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return exitParse(err)
	}
	if fs.NArg() > 0 || (*out != "table" && *out != "json") {
		fs.Usage()
		return 2
	}
	f, err := ff.filter(time.Now())
	if err != nil {
		fmt.Fprintf(stderr, "netsegctl %s: %v\n", cmd, err)
		return 2
	}
	var table *flowquery.Table
	enc := json.NewEncoder(stdout)
	emit := func(r *flow.Record) {
		if cmd == "alerts" && r.Kind != flow.KindAlert {
			return
		}
		if *out == "json" {
			_ = enc.Encode(r)
			return
		}
		table.Add(r)
		if *follow {
			_ = table.Flush()
		}
	}
	table = flowquery.NewTable(stdout, cmd == "alerts")
	bad := func(err error) { fmt.Fprintf(stderr, "netsegctl %s: skipped %v\n", cmd, err) }
	if *follow {
		ctx, cancel := followCtx()
		defer cancel()
		err = flowquery.Follow(ctx, *file, f, 500*time.Millisecond, emit, bad)
	} else {
		err = flowquery.Read(*file, f, emit, bad)
	}
	if ferr := table.Flush(); err == nil {
		err = ferr
	}
	if err != nil {
		fmt.Fprintf(stderr, "netsegctl %s: %v\n", cmd, strings.TrimPrefix(err.Error(), "netsegctl: "))
		return 1
	}
	return 0
}
