package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/netseg/netseg/api/agent"
	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/controller/explain"
)

// round makes each scripted connection once and prints what netseg
// decided (asked from the running agent) next to what the traffic did.
func (d *demo) round() {
	for _, c := range conns {
		x := d.explain(c.from, c.to, c.port)
		err := d.probe(c.from, c.to, c.port)
		outcome := "passed "
		if err != nil {
			outcome = "blocked"
		}
		how := "unexpected"
		if x.Expected {
			how = "expected"
		}
		flag := ""
		if (x.Verdict == segment.Denied) != (err != nil) {
			flag = "   <-- traffic disagrees with the decision: " + fmt.Sprint(err)
		}
		d.say("%s  %-16s -> %-16s %-9s %s  %-10s %-10s %s  [%s]%s", time.Now().Format("15:04:05"), c.from, c.to, c.port,
			outcome, x.Verdict, how, x.Origin, c.note, flag)
	}
}

func (d *demo) explain(from, to, port string) explain.Result {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := agent.Call(ctx, d.socket, agent.Request{Op: agent.OpExplain, Explain: &agent.Explain{From: from, To: to, Port: port}})
	var r explain.Result
	if err == nil {
		err = json.Unmarshal(resp.Explanation, &r)
	}
	if err != nil {
		d.r.Fatalf("explain %s -> %s %s: %v", from, to, port, err)
	}
	return r
}

func (d *demo) probe(from, to, port string) error {
	num, proto, _ := strings.Cut(port, "/")
	n, _ := strconv.Atoi(num)
	src := d.peers[from]
	dst := netip.AddrPortFrom(d.addrs[to], uint16(n))
	return src.Probe(strings.ToLower(proto), dst, 300*time.Millisecond)
}

// summary prints the endpoints and the kernel's counters.
func (d *demo) summary() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := agent.Call(ctx, d.socket, agent.Request{Op: agent.OpList})
	if err == nil {
		d.say("\n== endpoints registered with the agent (netsegctl endpoints)")
		for _, ep := range resp.Endpoints {
			d.say("%-18s %-14s %-14s zone %s", ep.Namespace+"/"+ep.Name, strings.Join(ep.IPs, ","), ep.HostIface, ep.Zone)
		}
	}
	d.say("\n== the node's nftables counters")
	out, err := d.node.Run("nft", "list", "counters", "table", "inet", "netseg")
	if err == nil {
		name := ""
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			switch {
			case len(f) >= 2 && f[0] == "counter":
				name = f[1]
			case len(f) >= 2 && f[0] == "packets" && name != "":
				d.say("  %-20s %s packets", name, f[1])
				name = ""
			}
		}
	}
}
