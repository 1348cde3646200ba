#!/usr/bin/env bash
# Runs every benchmark script in hack/bench/ in name order. Each script measures
# its subject and a reference in the same run and prints ratios.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/bin:$PWD/.tools/bin:$PATH"
rc=0
for s in hack/bench/*.sh; do
  [ -e "$s" ] || continue
  echo "=== $(basename "$s" .sh)"
  bash "$s" || { echo "bench $(basename "$s") failed"; rc=1; }
done
exit $rc
