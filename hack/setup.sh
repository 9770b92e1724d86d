#!/usr/bin/env bash
# Installs what netseg needs on a Debian machine, as root. Idempotent and
# quick when everything is present: it checks before it installs.
#   hack/setup.sh          what the demo and the agent need ("make demo")
#   hack/setup.sh --test   plus what the tests need: podman, etcd and the
#                          test kube-apiserver ("make test"; the first build
#                          of kube-apiserver takes several minutes)
set -euo pipefail

CNI_PLUGINS_VERSION=v1.10.0
CNI_BIN=${NETSEG_CNI_BIN:-/opt/cni/bin}
PACKAGES=(nftables conntrack iproute2 util-linux)
TESTS=false
if [[ ${1:-} == --test ]]; then
	TESTS=true
	PACKAGES+=(iperf3 etcd-server podman runc)
fi

if [[ $(id -u) -ne 0 ]]; then
	echo "setup: netseg's tests build network namespaces and nftables tables: run as root" >&2
	exit 1
fi
export PATH=$PATH:/usr/local/go/bin
command -v go >/dev/null || { echo "setup: Go 1.26 is required (go not found on PATH)" >&2; exit 1; }

missing=()
for p in "${PACKAGES[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	echo "setup: installing Debian packages: ${missing[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp=$CNI_BIN/.netseg-plugins-$CNI_PLUGINS_VERSION
if [[ ! -f $stamp ]]; then
	echo "setup: installing CNI reference plugins $CNI_PLUGINS_VERSION into $CNI_BIN"
	mkdir -p "$CNI_BIN"
	mod=github.com/containernetworking/plugins/plugins
	(cd /tmp && GOBIN=$CNI_BIN GOFLAGS=-mod=mod go install \
		"$mod/main/bridge@$CNI_PLUGINS_VERSION" \
		"$mod/main/ptp@$CNI_PLUGINS_VERSION" \
		"$mod/ipam/host-local@$CNI_PLUGINS_VERSION" \
		"$mod/meta/portmap@$CNI_PLUGINS_VERSION")
	touch "$stamp"
fi

# br_netfilter makes bridged traffic visible to the forward hook; it is
# built in on the kernels netseg targets, a module elsewhere.
if [[ ! -d /proc/sys/net/bridge ]] && command -v modprobe >/dev/null; then
	modprobe br_netfilter 2>/dev/null || true
fi

# The test control plane's kube-apiserver (e2e/controlplane): built once
# into a cache outside the repository (several minutes the first time).
if $TESTS; then
	bash "$(dirname "$0")/kube-apiserver.sh" >/dev/null
fi
