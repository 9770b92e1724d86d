#!/usr/bin/env bash
# netseg's demo on the embedded default: standalone mode with examples/,
# on a lab node (network namespaces) that is removed when the demo ends.
# Extra arguments go to bin/netseg-demo, which "make demo" builds (e.g.
# --rounds 0 to run until Ctrl-C; --help lists the flags).
set -euo pipefail
cd "$(dirname "$0")/.."
exec bin/netseg-demo --policy-dir examples --bin-dir bin "$@"
