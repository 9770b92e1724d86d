#!/usr/bin/env bash
# netseg's demo on the embedded default: standalone mode with examples/.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "netseg demo: the binaries are built in bin/."
echo "netseg demo: the node agent and the live demo (containers in zones, flow log, alerts) are not available in this version yet."
