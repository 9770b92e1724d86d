#!/usr/bin/env bash
# Builds the test control plane's kube-apiserver from the k8s.io/kubernetes
# module (a wrapper module replaces each k8s.io staging module by its
# release), once, into a cache outside the repository; later runs reuse it.
# Prints the binary's path. etcd comes from Debian's etcd-server.
set -euo pipefail
export PATH=$PATH:/usr/local/go/bin

VERSION=${KUBE_VERSION:-v1.37.2}
STAGING_VERSION=v0${VERSION#v1}
CACHE=${NETSEG_CACHE:-/var/cache/netseg}
BIN=$CACHE/kube-apiserver-$VERSION
if [[ -x $BIN ]]; then
	echo "$BIN"
	exit 0
fi
mkdir -p "$CACHE"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
go mod init netseg.test/kube-apiserver >/dev/null 2>&1
gomod=$(go mod download -json "k8s.io/kubernetes@$VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
{
	echo "require k8s.io/kubernetes $VERSION"
	echo "replace ("
	sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/k8s.io/.*#\t\1 => \1 '"$STAGING_VERSION"'#p' "$gomod"
	echo ")"
} >>go.mod
cat >main.go <<'GO'
package main

import _ "k8s.io/kubernetes/cmd/kube-apiserver/app"

func main() {}
GO
go mod tidy >&2
echo "building kube-apiserver $VERSION (several minutes, once)..." >&2
go build -o "$BIN.tmp" k8s.io/kubernetes/cmd/kube-apiserver
mv "$BIN.tmp" "$BIN"
echo "$BIN"
