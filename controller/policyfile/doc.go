// Package policyfile loads netseg policy from a directory of YAML files:
// the Zone, ZonePolicy and ServiceDependency kinds of netseg.io/v1alpha1
// and v1 Namespaces (for their labels). Decoding is strict and validation
// mirrors the CRDs' schema and CEL rules, so a directory that loads here
// is accepted by the API server. Every problem names its file, document
// and field path.
package policyfile
