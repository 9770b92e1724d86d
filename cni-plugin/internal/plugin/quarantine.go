package plugin

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/nftables"

	"github.com/netseg/netseg/api/agent"
)

// nftTable is the agent's table; the plugin puts addresses in its
// quarantine sets (agent.CNIQuarantineSet4/6), whose elements it owns: the
// agent creates the sets, never changes their elements, and keeps them
// across its own rebuilds. (The agent's own quarantine is the agent's alone.)
const nftTable = agent.Table

func quarantineSet(a netip.Addr) string {
	if a.Is4() {
		return agent.CNIQuarantineSet4
	}
	return agent.CNIQuarantineSet6
}

// errNoTable means the agent never created its table on this host: there is
// no set to put addresses in (and nothing enforcing either).
var errNoTable = errors.New("table inet " + nftTable + " does not exist")

// quarantine adds (add=true) or removes the addresses of ips ("10.88.0.5/24")
// to or from the quarantine sets of table inet netseg, in the plugin's own
// network namespace, in one netlink batch. Adding an element already present
// is not an error; removing one that is absent is skipped.
func quarantine(ips []string, add bool) error {
	return setElements(ips, add, quarantineSet)
}

// failOpenSet names the fail-open set of a's family.
func failOpenSet(a netip.Addr) string {
	if a.Is4() {
		return agent.CNIFailOpenSet4
	}
	return agent.CNIFailOpenSet6
}

// setElements adds or removes the addresses of ips to or from the sets
// setOf names, as quarantine does.
func setElements(ips []string, add bool, setOf func(netip.Addr) string) error {
	addrs, err := addrsOf(ips)
	if err != nil {
		return err
	}
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("list inet tables: %w", err)
	}
	var table *nftables.Table
	for _, t := range tables {
		if t.Name == nftTable {
			table = t
		}
	}
	if table == nil {
		return errNoTable
	}
	sets := map[string]*nftables.Set{}
	present := map[string]map[netip.Addr]bool{}
	for _, a := range addrs {
		name := setOf(a)
		s, ok := sets[name]
		if !ok {
			if s, err = c.GetSetByName(table, name); err != nil {
				return fmt.Errorf("set %s in table inet %s: %w", name, nftTable, err)
			}
			sets[name] = s
			if !add {
				present[name], err = setAddrs(c, s)
				if err != nil {
					return err
				}
			}
		}
		elem := []nftables.SetElement{{Key: a.AsSlice()}}
		if add {
			err = c.SetAddElements(s, elem)
		} else if present[name][a] {
			err = c.SetDeleteElements(s, elem)
		}
		if err != nil {
			return fmt.Errorf("%s %s: %w", name, a, err)
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("update sets of table inet %s: %w", nftTable, err)
	}
	return nil
}

func setAddrs(c *nftables.Conn, s *nftables.Set) (map[netip.Addr]bool, error) {
	elems, err := c.GetSetElements(s)
	if err != nil {
		return nil, fmt.Errorf("list set %s: %w", s.Name, err)
	}
	out := make(map[netip.Addr]bool, len(elems))
	for _, e := range elems {
		if a, ok := netip.AddrFromSlice(e.Key); ok {
			out[a] = true
		}
	}
	return out, nil
}

func addrsOf(ips []string) ([]netip.Addr, error) {
	out := make([]netip.Addr, 0, len(ips))
	for _, s := range ips {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("address %q: %w", s, err)
		}
		out = append(out, p.Addr().Unmap())
	}
	return out, nil
}

// QuarantineDir, in the state directory, holds one file per attachment whose
// addresses ADD quarantined, named "<containerID>_<ifName>", listing them
// one a line. A failed ADD leaves no result in the runtime's cache, so DEL
// gets no prevResult: this record is how it finds the addresses to release.
const QuarantineDir = "quarantined"

func quarantineRecord(stateDir string, a agent.Attachment) string {
	name := strings.ReplaceAll(a.ContainerID+"_"+a.IfName, "/", "_")
	return filepath.Join(stateDir, QuarantineDir, name)
}

// recordQuarantine notes that ips of attachment a are quarantined.
func recordQuarantine(stateDir string, a agent.Attachment, ips []string) error {
	path := quarantineRecord(stateDir, a)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	if err := os.WriteFile(path, []byte(strings.Join(ips, "\n")+"\n"), 0o644); err != nil {
		return fmt.Errorf("record quarantine: %w", err)
	}
	return nil
}

// recordedQuarantine returns the addresses recorded for a, if any.
func recordedQuarantine(stateDir string, a agent.Attachment) []string {
	b, err := os.ReadFile(quarantineRecord(stateDir, a))
	if err != nil {
		return nil
	}
	return strings.Fields(string(b))
}

// forgetQuarantine removes a's record; a missing record is fine.
func forgetQuarantine(stateDir string, a agent.Attachment) error {
	if err := os.Remove(quarantineRecord(stateDir, a)); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("remove quarantine record: %w", err)
	}
	return nil
}
