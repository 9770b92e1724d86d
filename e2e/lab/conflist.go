package lab

import (
	"encoding/json"
	"fmt"
)

// Net describes a lab CNI network made by a reference main plugin with
// host-local IPAM. Extra plugins (netseg, for one) are chained after it.
type Net struct {
	Name       string           // network name
	CNIVersion string           // default 1.0.0
	Type       string           // "bridge" or "ptp"
	Bridge     string           // bridge name (bridge only), default "nslab0"
	Subnet     string           // e.g. 10.88.0.0/24
	Subnet6    string           // optional IPv6 subnet
	DataDir    string           // host-local's lease directory: use t.TempDir()
	Chain      []map[string]any // plugins chained after the main plugin
}

// ConfList renders the network as a .conflist document.
func (n Net) ConfList() string {
	if n.CNIVersion == "" {
		n.CNIVersion = "1.0.0"
	}
	ranges := [][]map[string]string{{{"subnet": n.Subnet}}}
	routes := []map[string]string{{"dst": "0.0.0.0/0"}}
	if n.Subnet6 != "" {
		ranges = append(ranges, []map[string]string{{"subnet": n.Subnet6}})
		routes = append(routes, map[string]string{"dst": "::/0"})
	}
	main := map[string]any{
		"type": n.Type,
		"ipam": map[string]any{
			"type":    "host-local",
			"ranges":  ranges,
			"dataDir": n.DataDir,
			"routes":  routes,
		},
	}
	if n.Type == "bridge" {
		br := n.Bridge
		if br == "" {
			br = "nslab0"
		}
		main["bridge"] = br
		main["isGateway"] = true
		main["ipMasq"] = false
	}
	plugins := append([]map[string]any{main}, n.Chain...)
	b, err := json.Marshal(map[string]any{"cniVersion": n.CNIVersion, "name": n.Name, "plugins": plugins})
	if err != nil {
		panic(fmt.Sprintf("lab: marshal conflist: %v", err)) // only maps of strings: cannot fail
	}
	return string(b)
}
