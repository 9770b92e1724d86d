package node

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/controller/flowlog"
	"github.com/netseg/netseg/controller/policy"
	"github.com/netseg/netseg/dataplane"
)

// remarkJob is what live connections are decided again with: the policy
// of a sync, every endpoint it knows (with labels), and the quarantined
// addresses.
type remarkJob struct {
	compiled    *policy.Compiled
	endpoints   []policy.Endpoint
	quarantined map[netip.Addr]bool
	// adopted are addresses of containers that ran unsegmented
	// (failurePolicy open) until the agent adopted them: their connections
	// carry no mark (0) and are decided too.
	adopted map[netip.Addr]bool
}

// remarkKey names what a remark depends on: the policy generation and the
// quarantined addresses. A sync whose key differs from the last one asks
// for a remark; others (an ADD, a DEL) cannot change the decision of a
// live connection.
func remarkKey(generation int64, quarantined []netip.Addr) string {
	q := make([]string, len(quarantined))
	for i, a := range quarantined {
		q[i] = a.String()
	}
	slices.Sort(q)
	return fmt.Sprint(generation, " ", strings.Join(q, ","))
}

// requestRemark hands the job to the remark loop; a job not started yet is
// replaced (the latest policy is the one that counts).
func (a *Agent) requestRemark(job remarkJob) {
	for {
		select {
		case a.remarkJobs <- job:
			return
		default:
		}
		select {
		case <-a.remarkJobs:
		default:
		}
	}
}

// remarkLoop decides live connections again after each policy or
// quarantine change, so that one the policy now denies stops at its next
// packet (dataplane.Namespace.Remark).
func (a *Agent) remarkLoop(ctx context.Context) {
	if a.remark == nil {
		return
	}
	for {
		var job remarkJob
		select {
		case <-ctx.Done():
			return
		case job = <-a.remarkJobs:
		}
		r, err := a.remark(decider(job))
		a.mu.Lock()
		prev := a.remarkErr
		if err != nil {
			a.remarkErr = fmt.Errorf("revoking denied live connections: %w", err)
		} else {
			a.remarkErr = nil
		}
		a.mu.Unlock()
		if err != nil {
			if prev == nil {
				a.log.Error("could not decide live connections again; those the policy now denies go on until they end", "err", err)
			}
			continue
		}
		a.metrics.Revoked.Add(float64(r.Revoked))
		if r.Revoked > 0 || r.Restored > 0 {
			a.log.Info("live connections decided again", "checked", r.Checked, "revoked", r.Revoked, "restored", r.Restored, "changed", r.Changed)
		}
	}
}

// decider decides a connection by its original direction as the kernel's
// rules would for a new one, and gives the mark they would set: the
// quarantined addresses deny everything (origin 0).
func decider(job remarkJob) dataplane.Decider {
	res := flowlog.NewPolicyResolver(job.compiled, job.endpoints, nil)
	peer := func(ip netip.Addr) policy.Peer {
		if p := res.Resolve(ip); p.Name != "" {
			return policy.Peer{Namespace: p.Namespace, Name: p.Name, Labels: p.Labels, IPs: []netip.Addr{ip}}
		}
		return policy.AddrPeer(ip)
	}
	return func(old dataplane.Mark, src, dst netip.Addr, proto uint8, dport uint16) (dataplane.Mark, bool) {
		if old == 0 && !job.adopted[src] && !job.adopted[dst] {
			return 0, false // not netseg's (the node's own traffic, say)
		}
		if job.quarantined[src] || job.quarantined[dst] {
			return dataplane.MakeMark(segment.Deny, segment.Deny, 0, 0), true
		}
		p := segment.Protocol(proto)
		if p == segment.ICMPv6 {
			p = segment.ICMP // a policy's ICMP is the family's
		}
		d := job.compiled.Decide(peer(src), peer(dst), dport, p)
		return dataplane.MakeMark(d.Enforced.Action, d.Staged.Action, d.Enforced.Origin.ID, d.Staged.Origin.ID), true
	}
}

// remarkAdopted has the next sync decide the connections of adopted
// fail-open containers (opened unsegmented, unmarked) with their rules.
func (a *Agent) remarkAdopted(addrs []netip.Addr) {
	a.mu.Lock()
	for _, ip := range addrs {
		a.adoptedAddrs[ip] = true
	}
	a.mu.Unlock()
	a.requestSync()
}
