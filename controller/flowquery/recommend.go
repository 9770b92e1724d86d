package flowquery

import (
	"fmt"
	"io"
	"net/netip"
	"regexp"
	"sort"
	"strings"

	"github.com/netseg/netseg/api/flow"
	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/controller/policy"
)

// Recommender collects unexpected allowed flows and writes the
// ServiceDependencies that would make them expected: one per client
// workload (namespace and workload labels), one entry per destination
// workload or address with its ports.
type Recommender struct {
	// Label is the workload label; clients without it are selected by
	// their pod name under this key (and flagged in a comment). Default "app".
	Label string
	// Covered, when set, reports whether the current policy already makes
	// a connection expected (such flows are skipped).
	Covered func(r *flow.Record) bool

	clients map[clientKey]*client
	flows   int
}

type clientKey struct{ ns, app string }

type client struct {
	key      clientKey
	unlabled []string // pod names selected by name: no label
	deps     map[string]*dep
	flows    int
}

type dep struct {
	name      string
	workload  *clientKey // nil: an address
	cidr      netip.Prefix
	ports     map[string]int // "PROTO/port" -> flows
	flows     int
	unlabeled bool
}

// Add considers one record: final or aggregate flow records that are
// allowed and unexpected, from a workload.
func (rc *Recommender) Add(r *flow.Record) {
	if r.Kind != flow.KindFlow || r.Verdict != "allowed" || r.IsExpected() || r.Src == nil || r.Src.Name == "" || r.Dst == nil {
		return
	}
	if r.ConnStart != nil && !r.Start.Equal(*r.ConnStart) {
		return // a later record of a connection already counted
	}
	if r.ICMPType != nil {
		return // a port list cannot name ICMP alone; leave it to the zone rules
	}
	if rc.Covered != nil && rc.Covered(r) {
		return
	}
	if rc.clients == nil {
		rc.clients = map[clientKey]*client{}
	}
	ck, srcUnlabeled := rc.workload(r.Src)
	c := rc.clients[ck]
	if c == nil {
		c = &client{key: ck, deps: map[string]*dep{}}
		rc.clients[ck] = c
	}
	if srcUnlabeled && !contains(c.unlabled, r.Src.Name) {
		c.unlabled = append(c.unlabled, r.Src.Name)
	}
	var d *dep
	if r.Dst.Name != "" {
		dk, unl := rc.workload(r.Dst)
		id := "w/" + dk.ns + "/" + dk.app
		if d = c.deps[id]; d == nil {
			d = &dep{name: dnsName(dk.app), workload: &dk, ports: map[string]int{}, unlabeled: unl}
			c.deps[id] = d
		}
	} else {
		a, err := netip.ParseAddr(r.Dst.IP)
		if err != nil {
			return
		}
		p := netip.PrefixFrom(a, a.BitLen())
		id := "c/" + p.String()
		if d = c.deps[id]; d == nil {
			d = &dep{name: dnsName("net-" + a.String()), cidr: p, ports: map[string]int{}}
			c.deps[id] = d
		}
	}
	key := fmt.Sprintf("%s/%d", strings.ToUpper(r.Protocol), r.Dst.Port)
	d.ports[key]++
	d.flows++
	c.flows++
	rc.flows++
}

func (rc *Recommender) workload(e *flow.Endpoint) (clientKey, bool) {
	label := rc.Label
	if label == "" {
		label = "app"
	}
	if v := e.Labels[label]; v != "" {
		return clientKey{e.Namespace, v}, false
	}
	return clientKey{e.Namespace, e.Name}, true
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

var notDNS = regexp.MustCompile(`[^a-z0-9-]+`)

// dnsName makes a DNS label (what metadata.name and entry names need).
func dnsName(s string) string {
	s = strings.Trim(notDNS.ReplaceAllString(strings.ToLower(s), "-"), "-")
	if len(s) > 50 {
		s = strings.Trim(s[:50], "-")
	}
	if s == "" {
		s = "x"
	}
	return s
}

// Flows is the number of flows the recommendation covers.
func (rc *Recommender) Flows() int { return rc.flows }

// Write prints the ServiceDependencies as YAML documents, clients and
// entries in a stable order. Every object name ends in "-observed" so
// that it does not replace an existing one.
func (rc *Recommender) Write(w io.Writer, header string) error {
	label := rc.Label
	if label == "" {
		label = "app"
	}
	var b strings.Builder
	if header != "" {
		for _, l := range strings.Split(header, "\n") {
			b.WriteString("# " + l + "\n")
		}
	}
	keys := make([]clientKey, 0, len(rc.clients))
	for k := range rc.clients {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		return keys[i].ns < keys[j].ns || keys[i].ns == keys[j].ns && keys[i].app < keys[j].app
	})
	for i, k := range keys {
		c := rc.clients[k]
		if i > 0 {
			b.WriteString("---\n")
		}
		fmt.Fprintf(&b, "# %s/%s: %d unexpected allowed flows\n", k.ns, k.app, c.flows)
		if len(c.unlabled) > 0 {
			sort.Strings(c.unlabled)
			fmt.Fprintf(&b, "# pods without an %q label: %s; the selector uses the pod name: label the pods %s=%s or edit it\n",
				label, strings.Join(c.unlabled, ", "), label, k.app)
		}
		fmt.Fprintf(&b, "apiVersion: netseg.io/v1alpha1\nkind: ServiceDependency\nmetadata:\n  name: %s-observed\n  namespace: %s\n",
			dnsName(k.app), k.ns)
		fmt.Fprintf(&b, "spec:\n  workload:\n    matchLabels:\n      %s: %s\n  dependsOn:\n", label, yamlString(k.app))
		ids := make([]string, 0, len(c.deps))
		for id := range c.deps {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		used := map[string]int{}
		for _, id := range ids {
			d := c.deps[id]
			name := d.name
			if used[name]++; used[name] > 1 {
				name = fmt.Sprintf("%s-%d", name, used[name])
			}
			fmt.Fprintf(&b, "  # %d flows\n  - name: %s\n", d.flows, name)
			if d.workload != nil {
				fmt.Fprintf(&b, "    workload:\n      namespace: %s\n      matchLabels:\n        %s: %s\n", d.workload.ns, label, yamlString(d.workload.app))
				if d.unlabeled {
					fmt.Fprintf(&b, "      # %s has no %q label: selected by its pod name\n", d.workload.app, label)
				}
			} else {
				fmt.Fprintf(&b, "    cidr: %s\n", d.cidr)
			}
			ports := make([]string, 0, len(d.ports))
			for p := range d.ports {
				ports = append(ports, p)
			}
			sort.Strings(ports)
			b.WriteString("    ports:\n")
			for _, p := range ports {
				proto, num, _ := strings.Cut(p, "/")
				fmt.Fprintf(&b, "    - {protocol: %s, port: %s}  # %d flows\n", proto, num, d.ports[p])
			}
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func yamlString(s string) string { return fmt.Sprintf("%q", s) }

// CoveredBy reports whether the compiled policy already makes the
// record's connection expected (compiled without endpoints, workloads are
// matched by the labels the record carries).
func CoveredBy(c *policy.Compiled) func(r *flow.Record) bool {
	return func(r *flow.Record) bool {
		peer := func(e *flow.Endpoint) policy.Peer {
			a, _ := netip.ParseAddr(e.IP)
			if e.Name != "" {
				// The record's labels are those the flow log selects: the
				// workload label at least, which is what recommendations use.
				return policy.Peer{Namespace: e.Namespace, Name: e.Name, Labels: e.Labels, IPs: []netip.Addr{a}}
			}
			return policy.AddrPeer(a)
		}
		proto, err := segment.ParseProtocol(r.Protocol)
		if err != nil {
			if !strings.EqualFold(r.Protocol, "ICMPv6") {
				return false
			}
			proto = segment.ICMP
		}
		return c.Decide(peer(r.Src), peer(r.Dst), r.Dst.Port, proto).Expected
	}
}
