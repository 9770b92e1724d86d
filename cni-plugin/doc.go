// Command netseg is the chained CNI plugin of netseg (CNI type "netseg"). It
// runs after a main plugin that gives the container a veth (bridge, ptp, ...),
// registers the endpoint with the node agent over a unix socket, and returns
// only once the agent reports the interface's rules are in the kernel. This
// package main stays thin: the logic lives in cni-plugin/internal/plugin;
// docs/cni-plugin.md documents configuration and behaviour.
package main
