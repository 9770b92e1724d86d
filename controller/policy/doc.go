// Package policy is netseg's policy model and compiler. It is pure Go: no
// kernel, no Kubernetes client. Compile turns zones, zone policies, service
// dependencies, namespaces and endpoints into a Compiled ruleset: numbered
// origins, named peer sets, and for every endpoint ordered first-match rule
// lists (egress and ingress, enforced and staged) that a dataplane turns
// into one nftables rule each. Compiled.Decide is the reference decision for
// one connection. Tests hold the rule lists to it: this package's tests
// evaluate the lists directly (a tracer in tracer_test.go), and
// controller/enforce's trace the nftables rules rendered from them.
//
// Its words (actions, protocols, port ranges, verdicts, origins) are
// api/segment's, shared with the dataplane and the flow log; the CRDs'
// string actions and protocols become them in one place (build.go).
//
// The compiler is deterministic and order-independent: the same objects,
// given in any order, duplicated, or applied as Model updates, compile to
// the same Compiled value.
package policy
