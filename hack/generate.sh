#!/usr/bin/env bash
# Regenerates the API's deepcopy functions and the CRD manifests with the
# controller-gen pinned as a tool in go.mod.
set -euo pipefail
cd "$(dirname "$0")/.."
go tool controller-gen object paths=./api/...
go tool controller-gen crd paths=./api/... output:crd:dir=deploy/crds
go tool controller-gen rbac:roleName=netseg-agent paths=./controller/kube/... output:rbac:dir=deploy/rbac
