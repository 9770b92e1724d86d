package e2e_test

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/netseg/netseg/api/flow"
	"github.com/netseg/netseg/controller/flowquery"
	"github.com/netseg/netseg/e2e/lab"
)

// The adversary's way in: one attempt of the matrix.
type attempt struct {
	name   string
	family string // IPv4, IPv6, IPv6 link-local
	// shared: meaningful only where the attacker shares a link with the
	// target (bridge); on a routed network it cannot even be tried.
	shared bool
	// policy: the policy is what stops it (an Allow lets it through);
	// else a guard drops it whatever the policy says.
	policy bool
	run    func(token string) bool // true: it got through
	// what a denied flow record names: the destination after any DNAT
	src   netip.Addr
	dst   netip.AddrPort
	proto string
}

// outcome is how one attempt ended.
type outcome struct {
	passed  bool
	counted []string // named counters that moved while it ran
	logged  *flow.Record
}

// sink records the tokens that reach a datagram or raw socket in a
// container.
type sink struct {
	mu   sync.Mutex
	seen map[string]bool
}

func newSink(t *testing.T, c *lab.Container, network, addr string) *sink {
	t.Helper()
	var pc net.PacketConn
	if err := c.Do(func() (err error) { pc, err = net.ListenPacket(network, addr); return err }); err != nil {
		t.Fatalf("sink %s %s: %v", network, addr, err)
	}
	t.Cleanup(func() { _ = pc.Close() })
	s := &sink{seen: map[string]bool{}}
	go func() {
		buf := make([]byte, 64<<10)
		for {
			k, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			s.mu.Lock()
			for tok := range bytes.FieldsSeq(buf[:k]) {
				s.seen[string(tok)] = true
			}
			s.mu.Unlock()
		}
	}()
	return s
}

// got waits up to probeTimeout for token.
func (s *sink) got(token string) bool {
	deadline := time.Now().Add(probeTimeout)
	for {
		s.mu.Lock()
		ok := s.seen[token]
		s.mu.Unlock()
		if ok || time.Now().After(deadline) {
			return ok
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// payload is the token padded to size bytes, space-separated so a sink
// finds it in a reassembled datagram.
func payload(token string, size int) []byte {
	b := []byte(token + " ")
	for len(b) < size {
		b = append(b, ' ')
	}
	return b
}

// sendDatagram sends b from c over a socket of family domain (AF_INET,
// AF_INET6), type typ (SOCK_DGRAM, SOCK_RAW with proto) to sa, bound to
// from when it is set, with SO_BROADCAST.
func sendDatagram(c *lab.Container, domain, typ, proto int, from, to unix.Sockaddr, b []byte) error {
	return c.Do(func() error {
		fd, err := unix.Socket(domain, typ|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_BROADCAST, 1); err != nil {
			return err
		}
		if from != nil {
			if err := unix.Bind(fd, from); err != nil {
				return err
			}
		}
		return unix.Sendto(fd, b, 0, to)
	})
}

func sockaddr(a netip.Addr, port uint16, ifindex int) unix.Sockaddr {
	if a.Is4() {
		return &unix.SockaddrInet4{Addr: a.As4(), Port: int(port)}
	}
	return &unix.SockaddrInet6{Addr: a.As16(), Port: int(port), ZoneId: uint32(ifindex)}
}

// nodeCounters reads the named counters of both netseg tables in the node.
func nodeCounters(t *testing.T, n *node) map[string]uint64 {
	t.Helper()
	var out struct {
		Nftables []struct {
			Counter *struct {
				Name    string `json:"name"`
				Table   string `json:"table"`
				Packets uint64 `json:"packets"`
			} `json:"counter"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(n.ns.MustRun("nft", "-j", "list", "counters")), &out); err != nil {
		t.Fatal(err)
	}
	m := map[string]uint64{}
	for _, o := range out.Nftables {
		if o.Counter != nil && o.Counter.Table == "netseg" {
			m[o.Counter.Name] += o.Counter.Packets
		}
	}
	return m
}

func newToken() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// adversary is the lab of one network: an attacker (monitoring, in a zone
// whose own default is staged, so its egress lets the world through and
// only the target's protection counts), the target (payments, which
// nothing but checkout's declared dependency may reach) and the attempts.
type adversary struct {
	n                            *node
	plugin                       string
	checkout, payments, attacker *lab.Container
	attempts                     []attempt
	flowLog                      string
}

func newAdversary(t *testing.T, plugin string) *adversary {
	subnet6 := map[string]string{"bridge": "fd00:88::/64", "ptp": "fd00:89::/64"}[plugin]
	flowLog := filepath.Join(t.TempDir(), "flows.log")
	n := newDualNode(t, plugin, subnet6, "--flow-log", flowLog, "--flow-interval", "1s", "--fix-br-netfilter=false")
	a := &adversary{n: n, plugin: plugin, flowLog: flowLog}
	a.checkout = n.pod("checkout", "shop", "checkout", checkoutLabels)
	a.payments = n.pod("payments", "pay", "payments", paymentsLabels)
	a.attacker = n.pod("monitoring", "ops", "monitoring", monitoringLabels)
	n.ns.MustSysctl("net.ipv4.ip_forward", "1")
	n.ns.MustSysctl("net.ipv6.conf.all.forwarding", "1")
	// The plugins do not wait for duplicate address detection on the
	// node's side (ptp's gateway address on each host veth, the bridge's):
	// until it ends, a container has no IPv6 gateway.
	for _, ns := range []*lab.Netns{n.ns, a.checkout.Netns, a.payments.Netns, a.attacker.Netns} {
		waitFor(t, "IPv6 addresses past duplicate address detection in "+ns.Label, 10*time.Second, func() (bool, string) {
			out := ns.MustRun("ip", "-6", "addr", "show", "tentative")
			return strings.TrimSpace(out) == "", out
		})
	}
	a.addAttempts(t)
	return a
}

// The node's own addresses outside the pod network, where it DNATs a port
// to the target as kube-proxy and hostPort do.
var (
	nodeAddr4 = netip.MustParseAddr("192.0.2.1")
	nodeAddr6 = netip.MustParseAddr("2001:db8::1")
)

func (a *adversary) addAttempts(t *testing.T) {
	p, m := a.payments, a.attacker
	p4, p6, m4, m6 := p.IP(4), p.IP(6), m.IP(4), m.IP(6)
	if !p6.IsValid() || !m6.IsValid() {
		t.Fatalf("no IPv6 addresses: payments %v, monitoring %v", p.Result.IPs, m.Result.IPs)
	}
	gw4 := a.gateway(t)
	a.dnat(t, gw4, p4, p6)

	tcp := func(port uint16) func(netip.Addr) func(string) bool {
		p.ListenTCP(fmt.Sprintf("[::]:%d", port))
		return func(dst netip.Addr) func(string) bool {
			return func(string) bool { return m.Probe("tcp", netip.AddrPortFrom(dst, port), probeTimeout) == nil }
		}
	}
	udp := func(port uint16) func(netip.Addr) func(string) bool {
		p.ListenUDP(fmt.Sprintf("[::]:%d", port))
		return func(dst netip.Addr) func(string) bool {
			return func(string) bool { return m.Probe("udp", netip.AddrPortFrom(dst, port), probeTimeout) == nil }
		}
	}
	// datagram sends one datagram of size bytes to dst:port from a socket
	// bound to from (if valid), and asks a sink on the target.
	datagram := func(port uint16, size int, from, dst netip.Addr) func(string) bool {
		s := newSink(t, p, "udp", fmt.Sprintf("[::]:%d", port))
		domain := unix.AF_INET
		if dst.Is6() {
			domain = unix.AF_INET6
		}
		var bind unix.Sockaddr
		if from.IsValid() {
			bind = sockaddr(from, 0, 0)
		}
		return func(token string) bool {
			if err := sendDatagram(m, domain, unix.SOCK_DGRAM, 0, bind, sockaddr(dst, port, a.ifindex(t)), payload(token, size)); err != nil {
				t.Logf("send to %s: %v", dst, err)
				return false
			}
			return s.got(token)
		}
	}
	const rawProto = 253 // RFC 3692 experimentation
	raw := func(dst netip.Addr) func(string) bool {
		network, domain, listen := "ip4:253", unix.AF_INET, "0.0.0.0"
		if dst.Is6() {
			network, domain, listen = "ip6:253", unix.AF_INET6, "::"
		}
		s := newSink(t, p, network, listen)
		return func(token string) bool {
			if err := sendDatagram(m, domain, unix.SOCK_RAW, rawProto, nil, sockaddr(dst, 0, 0), payload(token, 64)); err != nil {
				t.Logf("raw send to %s: %v", dst, err)
				return false
			}
			return s.got(token)
		}
	}
	// spoofed probes payments:8443, which checkout may reach, with
	// checkout's address added to the attacker's interface.
	p.ListenTCP("[::]:8443")
	spoofed := func(own netip.Addr) func(string) bool {
		return func(string) bool {
			bits := 32
			if own.Is6() {
				bits = 128
			}
			addr := fmt.Sprintf("%s/%d", own, bits)
			args := []string{"addr", "add", addr, "dev", m.IfName}
			if own.Is6() {
				args = append(args, "nodad")
			}
			m.MustRun("ip", args...)
			defer m.MustRun("ip", "addr", "del", addr, "dev", m.IfName)
			return m.ProbeFrom("tcp", own, netip.AddrPortFrom(p.IP(map[bool]int{true: 4, false: 6}[own.Is4()]), 8443), probeTimeout) == nil
		}
	}
	ll := netip.Addr{}
	if a.plugin == "bridge" {
		ll = p.LinkLocal()
	}
	linkLocal := func(proto string, port uint16) func(string) bool {
		if proto == "tcp" {
			p.ListenTCP(fmt.Sprintf("[::]:%d", port))
		} else {
			p.ListenUDP(fmt.Sprintf("[::]:%d", port))
		}
		return func(string) bool {
			if !ll.IsValid() { // routed: the target's link-local address is on no link the attacker has
				return m.Probe(proto, netip.AddrPortFrom(netip.MustParseAddr("fe80::2").WithZone(m.IfName), port), probeTimeout) == nil
			}
			return m.Probe(proto, netip.AddrPortFrom(ll, port), probeTimeout) == nil
		}
	}
	tcp4, udp4 := tcp(7001), udp(7002)
	tcp6, udp6 := tcp(7003), udp(7004)
	tcp(7011) // the DNAT target
	subnetBcast := lastAddr(a.subnet4(t))
	a.attempts = []attempt{
		{name: "TCP", family: "IPv4", policy: true, run: tcp4(p4), src: m4, dst: netip.AddrPortFrom(p4, 7001), proto: "TCP"},
		{name: "UDP", family: "IPv4", policy: true, run: udp4(p4), src: m4, dst: netip.AddrPortFrom(p4, 7002), proto: "UDP"},
		{name: "TCP", family: "IPv6", policy: true, run: tcp6(p6), src: m6, dst: netip.AddrPortFrom(p6, 7003), proto: "TCP"},
		{name: "UDP", family: "IPv6", policy: true, run: udp6(p6), src: m6, dst: netip.AddrPortFrom(p6, 7004), proto: "UDP"},
		{name: "UDP to the IPv4-mapped address", family: "IPv6 socket", policy: true, src: m4, dst: netip.AddrPortFrom(p4, 7005), proto: "UDP",
			run: datagram(7005, 64, netip.Addr{}, netip.AddrFrom16(p4.As16()))},
		{name: "UDP fragments (3000 bytes)", family: "IPv4", policy: true, src: m4, dst: netip.AddrPortFrom(p4, 7006), proto: "UDP",
			run: datagram(7006, 3000, netip.Addr{}, p4)},
		{name: "UDP fragments (3000 bytes)", family: "IPv6", policy: true, src: m6, dst: netip.AddrPortFrom(p6, 7007), proto: "UDP",
			run: datagram(7007, 3000, netip.Addr{}, p6)},
		{name: "raw IP protocol 253", family: "IPv4", policy: true, src: m4, dst: netip.AddrPortFrom(p4, 0), proto: "253", run: raw(p4)},
		{name: "raw IP protocol 253", family: "IPv6", policy: true, src: m6, dst: netip.AddrPortFrom(p6, 0), proto: "253", run: raw(p6)},
		{name: "TCP via DNAT on the node's address", family: "IPv4", policy: true, src: m4, dst: netip.AddrPortFrom(p4, 7011), proto: "TCP",
			run: func(string) bool { return m.Probe("tcp", netip.AddrPortFrom(nodeAddr4, 30443), probeTimeout) == nil }},
		{name: "TCP via DNAT on the gateway address", family: "IPv4", policy: true, src: m4, dst: netip.AddrPortFrom(p4, 7011), proto: "TCP",
			run: func(string) bool { return m.Probe("tcp", netip.AddrPortFrom(gw4, 30444), probeTimeout) == nil }},
		{name: "TCP via DNAT on the node's address", family: "IPv6", policy: true, src: m6, dst: netip.AddrPortFrom(p6, 7011), proto: "TCP",
			run: func(string) bool { return m.Probe("tcp", netip.AddrPortFrom(nodeAddr6, 30443), probeTimeout) == nil }},
		{name: "UDP limited broadcast", family: "IPv4", shared: true, run: datagram(7008, 64, netip.Addr{}, netip.MustParseAddr("255.255.255.255"))},
		{name: "UDP subnet broadcast", family: "IPv4", shared: true, run: datagram(7009, 64, netip.Addr{}, subnetBcast)},
		{name: "UDP multicast all-hosts", family: "IPv4", shared: true, run: datagram(7010, 64, netip.Addr{}, netip.MustParseAddr("224.0.0.1"))},
		{name: "UDP multicast all-nodes from the global address", family: "IPv6", shared: true, run: datagram(7012, 64, m6, netip.MustParseAddr("ff02::1"))},
		{name: "UDP multicast all-nodes from the link-local address", family: "IPv6 link-local", shared: true, run: datagram(7013, 64, netip.Addr{}, netip.MustParseAddr("ff02::1"))},
		{name: "TCP", family: "IPv6 link-local", shared: true, run: linkLocal("tcp", 7014)},
		{name: "UDP", family: "IPv6 link-local", shared: true, run: linkLocal("udp", 7015)},
		{name: "TCP from checkout's spoofed source", family: "IPv4", run: spoofed(a.checkout.IP(4))},
		{name: "TCP from checkout's spoofed source", family: "IPv6", run: spoofed(a.checkout.IP(6))},
	}
}

// gateway is the attacker's default gateway: the bridge's address, or the
// host veth's on ptp.
func (a *adversary) gateway(t *testing.T) netip.Addr {
	for _, ipc := range a.attacker.Result.IPs {
		if gw, ok := netip.AddrFromSlice(ipc.Gateway); ok && gw.Unmap().Is4() {
			return gw.Unmap()
		}
	}
	t.Fatalf("no IPv4 gateway in %v", a.attacker.Result.IPs)
	return netip.Addr{}
}

func (a *adversary) subnet4(t *testing.T) netip.Prefix {
	for _, ipc := range a.attacker.Result.IPs {
		if ip, ok := netip.AddrFromSlice(ipc.Address.IP); ok && ip.Unmap().Is4() {
			ones, _ := ipc.Address.Mask.Size()
			return netip.PrefixFrom(ip.Unmap(), ones).Masked()
		}
	}
	t.Fatal("no IPv4 subnet")
	return netip.Prefix{}
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := (uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func (a *adversary) ifindex(t *testing.T) int {
	link, err := a.attacker.Handle().LinkByName(a.attacker.IfName)
	if err != nil {
		t.Fatal(err)
	}
	return link.Attrs().Index
}

// dnat gives the node addresses of its own (on its loopback) and DNATs
// port 30443 on them, and 30444 on the gateway, to the target's 7011.
func (a *adversary) dnat(t *testing.T, gw4, p4, p6 netip.Addr) {
	ns := a.n.ns
	ns.MustRun("ip", "addr", "add", nodeAddr4.String()+"/32", "dev", "lo")
	ns.MustRun("ip", "addr", "add", nodeAddr6.String()+"/128", "dev", "lo")
	rules := fmt.Sprintf(`table inet natlab {
  chain pre {
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr %s tcp dport 30443 dnat ip to %s:7011
    ip daddr %s tcp dport 30444 dnat ip to %s:7011
    ip6 daddr %s tcp dport 30443 dnat ip6 to [%s]:7011
  }
}
`, nodeAddr4, p4, gw4, p4, nodeAddr6, p6)
	f := filepath.Join(t.TempDir(), "natlab.nft")
	if err := os.WriteFile(f, []byte(rules), 0o600); err != nil {
		t.Fatal(err)
	}
	ns.MustRun("nft", "-f", f)
	t.Cleanup(func() { _, _ = ns.Run("nft", "delete", "table", "inet", "natlab") })
}

// phase runs every attempt once and returns how each ended.
func (a *adversary) phase(t *testing.T) []outcome {
	out := make([]outcome, len(a.attempts))
	starts := make([]time.Time, len(a.attempts))
	for i, at := range a.attempts {
		before := nodeCounters(t, a.n)
		starts[i] = time.Now()
		out[i].passed = at.run(newToken())
		after := nodeCounters(t, a.n)
		for name, v := range after {
			if v > before[name] && !strings.HasPrefix(name, "log_limited") {
				out[i].counted = append(out[i].counted, name)
			}
		}
		sort.Strings(out[i].counted)
	}
	// The flow log: a denied record for the attempt's addresses, port and
	// protocol, naming the deciding rule. Denied packets are aggregated
	// every second (--flow-interval).
	deadline := time.Now().Add(5 * time.Second)
	for {
		missing := 0
		_ = flowquery.Read(a.flowLog, &flowquery.Filter{}, func(r *flow.Record) {
			if r.Kind != flow.KindFlow || r.Verdict != "denied" || r.Src == nil || r.Dst == nil || r.Origin == nil {
				return
			}
			for i, at := range a.attempts {
				if out[i].logged == nil && at.src.IsValid() && r.Src.IP == at.src.String() && r.Dst.IP == at.dst.Addr().String() &&
					r.Dst.Port == at.dst.Port() && r.Protocol == at.proto && !r.End.Before(starts[i].Add(-time.Second)) {
					out[i].logged = r
				}
			}
		}, nil)
		for i, at := range a.attempts {
			if at.src.IsValid() && !out[i].passed && out[i].logged == nil && len(out[i].counted) == 0 {
				missing++
			}
		}
		if missing == 0 || time.Now().After(deadline) {
			return out
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestAdversary: from a container whose every connection to a target is
// denied (monitoring -> payments: ZonePolicy payments-perimeter, rule
// nothing-else-into-payments), every way in is tried, over the bridge and
// ptp plugins, with br_netfilter on and off, before and after an agent
// restart: IPv4 and IPv6 TCP and UDP, the target's IPv6 link-local
// address, its IPv4-mapped address, fragments, a raw IP protocol,
// broadcast and multicast, spoofed sources (an allowed peer's addresses),
// and a port the node DNATs to the target on its own addresses. No attempt
// may get through; each must be logged as denied with the deciding rule,
// or counted by a named counter (spoofing, link-local, broadcast and
// multicast, and on a bridge without br_netfilter the bridge guard). With
// the policy opened (ops may reach payments), the attempts the policy
// decides do get through: the channel works, and the policy is what stops
// them. The matrix is logged as ADVERSARY rows.
func TestAdversary(t *testing.T) {
	var passed, logged, counted, total int
	for _, plugin := range []string{"bridge", "ptp"} {
		t.Run(plugin, func(t *testing.T) {
			a := newAdversary(t, plugin)
			t.Cleanup(func() { brNetfilter(t, a.n.ns, "1") })
			expectPass(t, "checkout -> payments 8443 (the target is up)", a.checkout.Probe("tcp", netip.AddrPortFrom(a.payments.IP(4), 8443), probeTimeout))

			// Control: with ops -> payments allowed, what the policy
			// decides gets through.
			open := filepath.Join(a.n.policyDir, "zz-open.yaml")
			gen := a.n.status(t).Status.PolicyGeneration
			if err := os.WriteFile(open, []byte(`apiVersion: netseg.io/v1alpha1
kind: ZonePolicy
metadata: {name: adversary-control}
spec:
  priority: 1
  rules:
  - {name: ops-to-payments, action: Allow, from: [{zone: ops}], to: [{zone: payments}]}
`), 0o644); err != nil {
				t.Fatal(err)
			}
			a.waitGeneration(t, gen)
			// The status reports the generation when the agent loads it, the
			// kernel has it after the sync: wait for the first attempt's verdict.
			waitFor(t, "the opened policy in the kernel", 5*time.Second, func() (bool, string) {
				return a.attempts[0].run(newToken()), "monitoring -> payments still denied"
			})
			for i, o := range a.phase(t) {
				at := a.attempts[i]
				if at.policy && !o.passed {
					t.Errorf("control (policy allows): %s %s did not get through: the attempt shows nothing", at.family, at.name)
				}
				if !at.policy && o.passed {
					t.Errorf("control (policy allows): %s %s got through a guard", at.family, at.name)
				}
			}
			gen = a.n.status(t).Status.PolicyGeneration
			if err := os.Remove(open); err != nil {
				t.Fatal(err)
			}
			a.waitGeneration(t, gen)
			waitFor(t, "the opened policy gone from the kernel", 5*time.Second, func() (bool, string) {
				return !a.attempts[0].run(newToken()), "monitoring -> payments still allowed"
			})

			for _, ph := range []struct {
				name    string
				brnf    string
				restart bool
			}{{"br_netfilter on", "1", false}, {"br_netfilter off", "0", false}, {"restarted, br_netfilter on", "1", true}, {"restarted, br_netfilter off", "0", false}} {
				if ph.restart {
					a.n.stopAgent(syscall.SIGTERM)
					a.n.startAgent()
				}
				brNetfilter(t, a.n.ns, ph.brnf)
				for i, o := range a.phase(t) {
					at := a.attempts[i]
					result := "FAILED"
					switch {
					case o.passed:
						passed++
						t.Errorf("%s, %s: %s %s got through", plugin, ph.name, at.family, at.name)
						result = "PASSED"
					case o.logged != nil:
						logged++
						result = fmt.Sprintf("denied, logged: %s %s/%s", o.logged.Origin.Kind, o.logged.Origin.Name, o.logged.Origin.Rule)
					case len(o.counted) > 0:
						counted++
						result = "dropped, counted: " + strings.Join(o.counted, ",")
					case at.shared && plugin == "ptp":
						result = "no path (routed: no shared link)"
					default:
						t.Errorf("%s, %s: %s %s failed but was neither logged nor counted", plugin, ph.name, at.family, at.name)
					}
					total++
					t.Logf("ADVERSARY | %s | %s | %s | %s | %s", plugin, ph.name, at.family, at.name, result)
				}
				brNetfilter(t, a.n.ns, "1")
			}
		})
	}
	t.Logf("ADVERSARY | total %d attempts: %d passed, %d logged with the deciding rule, %d counted drops, %d with no path", total, passed, logged, counted, total-passed-logged-counted)
}

func (a *adversary) waitGeneration(t *testing.T, gen int64) {
	waitFor(t, "the policy change applied", 5*time.Second, func() (bool, string) {
		st := a.n.status(t).Status
		return st.PolicyGeneration > gen && st.LastError == "", st.LastError
	})
}
