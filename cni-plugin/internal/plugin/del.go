package plugin

import (
	"encoding/json"
	"fmt"
	"slices"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/netseg/netseg/api/agent"
)

// Del forgets the attachment. It is idempotent and tolerant: it succeeds
// without prevResult, without netns, and twice. With the agent down it
// answers "try again later" (CNI code 11): the runtime retries, and the
// attachment is not reported gone while the agent still holds it.
func Del(args *skel.CmdArgs) error {
	conf, result, err := parseConfig(args.StdinData, "DEL")
	if err != nil {
		return err
	}
	ep, err := endpoint(conf, args)
	if err != nil {
		// Identity is informative on DEL: the attachment is the key.
		ep = &agent.Endpoint{Attachment: agent.Attachment{ContainerID: args.ContainerID, IfName: args.IfName}, Netns: args.Netns}
	}
	if result != nil {
		if _, ips, err := containerIface(result, args.Netns, args.IfName); err == nil {
			ep.IPs = ips
		}
	}
	// The addresses go back to IPAM: never leave them quarantined for the
	// next container that gets them.
	liftQuarantine(conf, ep.Attachment, ep.IPs)
	closeFailOpen(conf, ep.Attachment)
	if _, err := callAgent(conf, agent.Request{Op: agent.OpDel, Endpoint: ep}); err != nil {
		return agentError(conf, fmt.Sprintf("remove container %s interface %s", args.ContainerID, args.IfName), err)
	}
	return nil
}

// Check asks the agent whether the attachment is registered and its rules
// are in the kernel, and that it still matches the interface ADD saw.
func Check(args *skel.CmdArgs) error {
	conf, result, err := parseConfig(args.StdinData, "CHECK")
	if err != nil {
		return err
	}
	ep, err := attached(conf, result, args)
	if err != nil {
		return err
	}
	what := fmt.Sprintf("check container %s interface %s", args.ContainerID, args.IfName)
	resp, err := callAgent(conf, agent.Request{Op: agent.OpCheck, Endpoint: ep})
	if err != nil {
		return agentError(conf, what, err)
	}
	for _, got := range resp.Endpoints {
		if got.Attachment != ep.Attachment {
			continue
		}
		if got.HostIface != ep.HostIface || !slices.Equal(sorted(got.IPs), sorted(ep.IPs)) {
			return types.NewError(types.ErrInternal,
				fmt.Sprintf("netseg: %s: agent at %s has it as %s %v, the kernel as %s %v: delete and re-add the container", what, conf.Socket, got.HostIface, got.IPs, ep.HostIface, ep.IPs), "")
		}
	}
	return nil
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// GC removes every endpoint of this network the runtime no longer lists in
// cni.dev/valid-attachments (CNI 1.1). An empty list means none is valid.
func GC(args *skel.CmdArgs) error {
	conf, _, err := parseConfig(args.StdinData, "GC")
	if err != nil {
		return err
	}
	var raw map[string]json.RawMessage
	_ = json.Unmarshal(args.StdinData, &raw) // parsed above
	if _, ok := raw["cni.dev/valid-attachments"]; !ok {
		return types.NewError(types.ErrInvalidNetworkConfig,
			"netseg: GC without cni.dev/valid-attachments: the runtime must list the attachments to keep (an empty list removes all)", "")
	}
	keep := make([]agent.Attachment, 0, len(conf.ValidAttachments))
	for _, a := range conf.ValidAttachments {
		keep = append(keep, agent.Attachment{ContainerID: a.ContainerID, IfName: a.IfName})
	}
	if _, err := callAgent(conf, agent.Request{Op: agent.OpGC, Keep: keep, Network: conf.Name}); err != nil {
		return agentError(conf, fmt.Sprintf("garbage-collect endpoints (keeping %d)", len(keep)), err)
	}
	return nil
}

// Status reports whether the agent is ready to program new endpoints
// (CNI 1.1): the runtime holds back new containers until it is.
func Status(args *skel.CmdArgs) error {
	conf, _, err := parseConfig(args.StdinData, "STATUS")
	if err != nil {
		return err
	}
	resp, err := callAgent(conf, agent.Request{Op: agent.OpStatus})
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable,
			fmt.Sprintf("netseg: agent at %s not available: %v: start netseg-agent, or point \"socket\" at the path it listens on", conf.Socket, err), "")
	}
	if !resp.Ready {
		return types.NewError(types.ErrPluginNotAvailable,
			fmt.Sprintf("netseg: agent at %s is not ready yet (still loading policy or syncing the dataplane)", conf.Socket), "")
	}
	return nil
}
