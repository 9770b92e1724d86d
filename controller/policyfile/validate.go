package policyfile

import (
	"fmt"
	"regexp"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/netseg/netseg/api/v1alpha1"
	"github.com/netseg/netseg/controller/policy"
)

// The checks below mirror the markers and CEL rules in api/v1alpha1; keep
// them in step.

type fieldError struct{ field, msg string }

type checker struct{ errs []fieldError }

func (c *checker) add(field, format string, args ...any) {
	c.errs = append(c.errs, fieldError{field, fmt.Sprintf(format, args...)})
}

var (
	dnsLabelRe = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	zoneRefRe  = regexp.MustCompile(`^(\*|[a-z0-9]([-a-z0-9.]*[a-z0-9])?)$`)
)

func (c *checker) name(field, name string, label bool) {
	if name == "" {
		c.add(field, "required")
		return
	}
	msgs := validation.IsDNS1123Subdomain(name)
	if label {
		msgs = validation.IsDNS1123Label(name)
	}
	for _, m := range msgs {
		c.add(field, "%s", m)
	}
}

func (c *checker) enum(field, v string, allowed ...string) {
	if v == "" {
		c.add(field, "required")
		return
	}
	for _, a := range allowed {
		if v == a {
			return
		}
	}
	c.add(field, "unsupported value %q: supported values: %s", v, strings.Join(allowed, ", "))
}

func (c *checker) between(field string, v, lo, hi int64) {
	if v < lo || v > hi {
		c.add(field, "must be between %d and %d, not %d", lo, hi, v)
	}
}

func (c *checker) maxItems(field string, n, max int) {
	if n > max {
		c.add(field, "must have at most %d items, not %d", max, n)
	}
}

func (c *checker) selector(field string, s *metav1.LabelSelector) {
	if s == nil {
		return
	}
	if _, err := metav1.LabelSelectorAsSelector(s); err != nil {
		c.add(field, "invalid label selector: %v", err)
	}
}

func (c *checker) cidr(field, s string) {
	if _, err := policy.ParseCIDR(s); err != nil {
		c.add(field, "%v", err)
	}
}

func (c *checker) listName(field, name string) {
	if name == "" {
		c.add(field, "required")
	} else if len(name) > 63 || !dnsLabelRe.MatchString(name) {
		c.add(field, "must be lower-case letters, digits and '-', at most 63 characters, starting and ending with a letter or digit")
	}
}

func (c *checker) ports(field string, ports []v1alpha1.PortRange) {
	c.maxItems(field, len(ports), 64)
	for i, p := range ports {
		f := fmt.Sprintf("%s[%d]", field, i)
		c.enum(f+".protocol", string(p.Protocol), "TCP", "UDP", "SCTP")
		if p.Port == 0 {
			c.add(f+".port", "required")
		} else {
			c.between(f+".port", int64(p.Port), 1, 65535)
		}
		if p.EndPort != nil {
			c.between(f+".endPort", int64(*p.EndPort), 1, 65535)
			if *p.EndPort < p.Port {
				c.add(f+".endPort", "must be >= port (%d)", p.Port)
			}
		}
	}
}

func validateZone(z *v1alpha1.Zone) []fieldError {
	var c checker
	c.name("metadata.name", z.Name, false)
	if z.Name == "unzoned" {
		c.add("metadata.name", "the name unzoned is reserved for endpoints in no zone")
	}
	s := z.Spec
	if len(s.Description) > 1024 {
		c.add("spec.description", "must be at most 1024 characters")
	}
	c.selector("spec.namespaceSelector", s.NamespaceSelector)
	c.selector("spec.podSelector", s.PodSelector)
	c.maxItems("spec.cidrs", len(s.CIDRs), 256)
	seen := map[string]bool{}
	for i, cidr := range s.CIDRs {
		f := fmt.Sprintf("spec.cidrs[%d]", i)
		c.cidr(f, cidr)
		if seen[cidr] {
			c.add(f, "duplicate value %q", cidr)
		}
		seen[cidr] = true
	}
	c.between("spec.priority", int64(s.Priority), 0, 1000000)
	c.enum("spec.defaultAction", string(s.DefaultAction), "Deny", "Allow")
	c.enum("spec.mode", string(s.Mode), "Enforce", "Monitor")
	return c.errs
}

func validateZonePolicy(p *v1alpha1.ZonePolicy) []fieldError {
	var c checker
	c.name("metadata.name", p.Name, false)
	s := p.Spec
	c.between("spec.priority", int64(s.Priority), 0, 1000000)
	c.enum("spec.mode", string(s.Mode), "Enforce", "Monitor")
	if len(s.Rules) == 0 {
		c.add("spec.rules", "required: at least one rule")
	}
	c.maxItems("spec.rules", len(s.Rules), 256)
	seen := map[string]int{}
	for i, r := range s.Rules {
		f := fmt.Sprintf("spec.rules[%d]", i)
		c.listName(f+".name", r.Name)
		if j, dup := seen[r.Name]; dup && r.Name != "" {
			c.add(f+".name", "duplicate rule name %q (also spec.rules[%d])", r.Name, j)
		} else {
			seen[r.Name] = i
		}
		c.enum(f+".action", string(r.Action), "Allow", "Deny", "Delegate")
		c.zoneRefs(f+".from", r.From)
		c.zoneRefs(f+".to", r.To)
		c.ports(f+".ports", r.Ports)
	}
	return c.errs
}

func (c *checker) zoneRefs(field string, refs []v1alpha1.ZoneRef) {
	if len(refs) == 0 {
		c.add(field, "required: at least one zone")
	}
	c.maxItems(field, len(refs), 64)
	for i, r := range refs {
		f := fmt.Sprintf("%s[%d].zone", field, i)
		switch {
		case r.Zone == "":
			c.add(f, "required")
		case len(r.Zone) > 253 || !zoneRefRe.MatchString(r.Zone):
			c.add(f, "must be a zone name or \"*\", not %q", r.Zone)
		}
	}
}

func validateServiceDependency(d *v1alpha1.ServiceDependency, obj map[string]any) []fieldError {
	var c checker
	c.name("metadata.name", d.Name, false)
	c.name("metadata.namespace", d.Namespace, true)
	if spec, _ := obj["spec"].(map[string]any); spec == nil || spec["workload"] == nil {
		c.add("spec.workload", "required")
	}
	c.selector("spec.workload", &d.Spec.Workload)
	if len(d.Spec.DependsOn) == 0 {
		c.add("spec.dependsOn", "required: at least one dependency")
	}
	c.maxItems("spec.dependsOn", len(d.Spec.DependsOn), 256)
	seen := map[string]int{}
	for i, dep := range d.Spec.DependsOn {
		f := fmt.Sprintf("spec.dependsOn[%d]", i)
		c.listName(f+".name", dep.Name)
		if j, dup := seen[dep.Name]; dup && dep.Name != "" {
			c.add(f+".name", "duplicate dependency name %q (also spec.dependsOn[%d])", dep.Name, j)
		} else {
			seen[dep.Name] = i
		}
		n := 0
		if dep.Service != nil {
			n++
			if dep.Service.Name == "" {
				c.add(f+".service.name", "required")
			}
			if dep.Service.Namespace != "" {
				c.name(f+".service.namespace", dep.Service.Namespace, true)
			}
		}
		if dep.Workload != nil {
			n++
			if dep.Workload.Namespace != "" {
				c.name(f+".workload.namespace", dep.Workload.Namespace, true)
			}
			c.selector(f+".workload", &dep.Workload.LabelSelector)
		}
		if dep.CIDR != "" {
			n++
			c.cidr(f+".cidr", dep.CIDR)
		}
		if n != 1 {
			c.add(f, "exactly one of service, workload or cidr must be set")
		}
		c.ports(f+".ports", dep.Ports)
	}
	return c.errs
}

func validateNamespace(n *namespaceDoc) []fieldError {
	var c checker
	c.name("metadata.name", n.Name, true)
	return c.errs
}
