// Package e2e holds netseg's end-to-end tests: the real binaries driven
// through chained CNI .conflist files with the reference CNI plugins, real
// traffic between lab namespaces, and a real kube-apiserver for the
// Kubernetes mode. The lab subpackage builds the namespaces these tests use.
package e2e
