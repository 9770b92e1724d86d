package policyfile

import (
	"github.com/netseg/netseg/controller/policy"
)

// Input is the policy as compiler input, with the given endpoints and
// Services (standalone mode has no Services).
func (p *Policy) Input(cfg policy.Config, endpoints []policy.Endpoint, services []policy.Service) policy.Input {
	return policy.Input{
		Config:              cfg,
		Zones:               p.Zones,
		ZonePolicies:        p.ZonePolicies,
		ServiceDependencies: p.ServiceDependencies,
		Namespaces:          p.Namespaces,
		Endpoints:           endpoints,
		Services:            services,
	}
}

// Locate turns a compiler problem into a message that starts with the
// file and document of the object it is about, when known.
func (p *Policy) Locate(pr policy.Problem) string {
	name := pr.Name
	if pr.Namespace != "" {
		name = pr.Namespace + "/" + pr.Name
	}
	doc, ok := p.docs[pr.Kind+" "+name]
	if !ok {
		return pr.String()
	}
	if pr.Field == "" {
		return doc.String() + ": " + pr.Message
	}
	return doc.String() + ": " + pr.Field + ": " + pr.Message
}

// Summary counts a policy's objects.
type Summary struct {
	Zones, ZonePolicies, Rules, ServiceDependencies, Dependencies, Namespaces int
}

// Summary counts the loaded objects.
func (p *Policy) Summary() Summary {
	s := Summary{Zones: len(p.Zones), ZonePolicies: len(p.ZonePolicies),
		ServiceDependencies: len(p.ServiceDependencies), Namespaces: len(p.Namespaces)}
	for _, zp := range p.ZonePolicies {
		s.Rules += len(zp.Spec.Rules)
	}
	for _, sd := range p.ServiceDependencies {
		s.Dependencies += len(sd.Spec.DependsOn)
	}
	return s
}
