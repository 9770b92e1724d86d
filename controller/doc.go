// Package controller is the policy side of netseg: the policy model and its
// compiler (pure Go), the policy sources (a directory of YAML files, or the
// Kubernetes API), and the reconcilers that hand compiled rules to the
// dataplane. Its subpackages follow the data flow from source to ruleset.
package controller
