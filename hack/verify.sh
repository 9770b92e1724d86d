#!/usr/bin/env bash
# Fails when generated files or go.mod/go.sum are stale: it regenerates,
# tidies, and compares checksums of the tracked files before and after.
set -euo pipefail
cd "$(dirname "$0")/.."

snapshot() { git ls-files -co --exclude-standard -- go.mod go.sum api deploy | sort | xargs sha256sum; }

before=$(snapshot)
bash hack/generate.sh
go mod tidy
after=$(snapshot)
if [[ "$before" != "$after" ]]; then
	echo "verify: generated files or go.mod/go.sum were stale; these changed:" >&2
	diff <(echo "$before") <(echo "$after") >&2 || true
	echo "verify: run 'make generate && go mod tidy' and commit the result" >&2
	exit 1
fi
echo "verify: generated files and go.mod/go.sum are up to date"
