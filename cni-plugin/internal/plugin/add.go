package plugin

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/netseg/netseg/api/agent"
)

// DefaultNamespace is the namespace of pods whose runtime passes none.
const DefaultNamespace = "default"

// Stderr receives warnings and notes (the runtime logs a plugin's stderr).
var Stderr io.Writer = os.Stderr

// podArgs are the CNI_ARGS a Kubernetes runtime (and podman) passes.
type podArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE types.UnmarshallableString
	K8S_POD_NAME      types.UnmarshallableString
	K8S_POD_UID       types.UnmarshallableString
}

// endpoint builds the agent's view of the attachment: identity from
// CNI_ARGS, labels from runtimeConfig. Addresses and host interface are
// filled in by the caller.
func endpoint(conf *Config, args *skel.CmdArgs) (*agent.Endpoint, error) {
	pa := podArgs{}
	pa.IgnoreUnknown = true
	if err := types.LoadArgs(args.Args, &pa); err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("netseg: cannot parse CNI_ARGS %q: pass KEY=VALUE pairs separated by ';'", args.Args), err.Error())
	}
	// Runtimes outside Kubernetes pass less: podman 4 passes only
	// K8S_POD_NAME (the container name), cnitool nothing. Such pods live in
	// the namespace "default", as in Kubernetes, and are named after the
	// container name or, lacking one, the container ID.
	ns, name := string(pa.K8S_POD_NAMESPACE), string(pa.K8S_POD_NAME)
	if ns == "" {
		ns = DefaultNamespace
	}
	if name == "" {
		name = args.ContainerID
		if len(name) > 12 {
			name = name[:12]
		}
	}
	return &agent.Endpoint{
		Attachment: agent.Attachment{ContainerID: args.ContainerID, IfName: args.IfName},
		Network:    conf.Name,
		Netns:      args.Netns,
		Namespace:  ns,
		Name:       name,
		UID:        string(pa.K8S_POD_UID),
		Labels:     conf.RuntimeConfig.Labels,
	}, nil
}

// attached is the endpoint of an attachment that prevResult describes: its
// identity, its addresses, and the host side of its veth (ADD and CHECK).
func attached(conf *Config, result *current.Result, args *skel.CmdArgs) (*agent.Endpoint, error) {
	iface, ips, err := containerIface(result, args.Netns, args.IfName)
	if err != nil {
		return nil, err
	}
	host, err := hostVeth(args.Netns, iface.Name)
	if err != nil {
		return nil, cniError("find the host side of "+iface.Name, err)
	}
	ep, err := endpoint(conf, args)
	if err != nil {
		return nil, err
	}
	ep.IPs, ep.HostIface = ips, host
	return ep, nil
}

// Add registers the container interface with the agent and returns once
// its rules are in the kernel; it passes the previous result on unchanged.
func Add(args *skel.CmdArgs) error {
	conf, result, err := parseConfig(args.StdinData, "ADD")
	if err != nil {
		return err
	}
	ep, err := attached(conf, result, args)
	if err != nil {
		return err
	}
	ips := ep.IPs
	if _, err := callAgent(conf, agent.Request{Op: agent.OpAdd, Endpoint: ep}); err != nil {
		return addFailed(conf, ep, err, result)
	}
	// A failed ADD of the same attachment may have quarantined these
	// addresses (and recorded it); the agent has now programmed them.
	// Without a record there is nothing to lift, and no reason to spend
	// netlink round trips on every ADD.
	if len(recordedQuarantine(conf.StateDir, ep.Attachment)) > 0 {
		liftQuarantine(conf, ep.Attachment, ips)
	}
	closeFailOpen(conf, ep.Attachment)
	return types.PrintResult(result, conf.CNIVersion)
}

// addFailed applies the failure policy to an ADD the agent did not
// complete.
func addFailed(conf *Config, ep *agent.Endpoint, cause error, result types.Result) error {
	what := fmt.Sprintf("register container %s interface %s (%s)", ep.ContainerID, ep.IfName, ep.HostIface)
	if conf.FailurePolicy == FailOpen {
		n, cerr := countFailOpen(conf.StateDir)
		count := fmt.Sprintf("fail-open count %d", n)
		if cerr != nil {
			count = fmt.Sprintf("fail-open count not updated: %v", cerr)
		}
		if note := openUnsegmented(conf, ep); note != "" {
			count += "; " + note
		}
		fmt.Fprintf(Stderr, "netseg: WARNING: failurePolicy open: container %s interface %s starts WITHOUT segmentation until the agent adopts it: agent at %s: %v (%s)\n",
			ep.ContainerID, ep.IfName, conf.Socket, cause, count)
		return types.PrintResult(result, conf.CNIVersion)
	}
	cerr := agentError(conf, what, cause)
	switch qerr := quarantine(ep.IPs, true); {
	case qerr == nil:
		cerr.Details = fmt.Sprintf("addresses %s quarantined in table inet %s", strings.Join(ep.IPs, ","), nftTable)
		if rerr := recordQuarantine(conf.StateDir, ep.Attachment, ep.IPs); rerr != nil {
			cerr.Details += fmt.Sprintf(" (DEL will not find them: %v)", rerr)
		}
	case errors.Is(qerr, errNoTable):
		cerr.Details = fmt.Sprintf("addresses %s not quarantined: %v (the agent has never run on this host)", strings.Join(ep.IPs, ","), qerr)
	default:
		cerr.Details = fmt.Sprintf("addresses %s not quarantined: %v", strings.Join(ep.IPs, ","), qerr)
	}
	if !errors.Is(cause, agent.ErrUnavailable) {
		// The agent is there but failed: have it remember the quarantine,
		// so that its next sync keeps the addresses blocked.
		short := *conf
		short.timeout = min(conf.timeout, time.Second)
		if _, err := callAgent(&short, agent.Request{Op: agent.OpQuarantine, Endpoint: ep}); err != nil {
			cerr.Details += fmt.Sprintf("; agent did not record the quarantine: %v", err)
		}
	}
	return cerr
}

// liftQuarantine releases ips and whatever a failed ADD recorded for
// attachment a, best effort: a failure is a note on stderr.
func liftQuarantine(conf *Config, a agent.Attachment, ips []string) {
	ips = append(slices.Clone(ips), recordedQuarantine(conf.StateDir, a)...)
	if len(ips) == 0 {
		return
	}
	slices.Sort(ips)
	ips = slices.Compact(ips)
	if err := quarantine(ips, false); err != nil && !errors.Is(err, errNoTable) {
		fmt.Fprintf(Stderr, "netseg: note: lift quarantine of %s: %v\n", strings.Join(ips, ","), err)
		return
	}
	if err := forgetQuarantine(conf.StateDir, a); err != nil {
		fmt.Fprintf(Stderr, "netseg: note: %v\n", err)
	}
}
