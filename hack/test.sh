#!/usr/bin/env bash
# Runs the test suites. "unit": no root needed (root-only tests skip via -short).
# "all": everything; as root this includes the integration and end-to-end tests.
set -uo pipefail
mode=${1:-all}
cd "$(dirname "$0")/.."
export GOFLAGS=-buildvcs=false
export PATH="$PWD/.tools/bin:$PATH"
args=(-count=1 -timeout 45m -tags simulated)
case "$mode" in
  unit) args+=(-short) ;;
  all)
    if [ "$(id -u)" -ne 0 ]; then
      echo "test: not root: root integration tests will skip (run as root for the full suite)"
    fi
    # Binaries the integration tests drive (agent, rootfs builder, shim, KBS).
    make --no-print-directory build || exit 1
    ;;
  *) echo "usage: $0 unit|all" >&2; exit 2 ;;
esac
log=$(mktemp)
go test "${args[@]}" ./... 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
pass=$(grep -cE '^ok ' "$log")
echo
echo "packages: $pass passed, $(grep -cE '^FAIL\s' "$log") failed"
rm -f "$log"
exit "$rc"
