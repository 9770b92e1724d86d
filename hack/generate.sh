#!/usr/bin/env bash
# Regenerates code and manifests from markers with the pinned controller-gen.
set -euo pipefail
cd "$(dirname "$0")/.."
if ls api/v1alpha1/*_types.go >/dev/null 2>&1; then
	go tool controller-gen object paths=./api/...
	go tool controller-gen crd paths=./api/... output:crd:dir=deploy/crds
fi
