#!/usr/bin/env bash
# Guest pull benchmark against a reference measured in the same run: pull +
# unpack of one locally built image (busybox, 400 small files, 24 MiB of
# random data) from a loopback registry with an empty layer cache, against
# skopeo copy of the same image from the same kind of registry into an OCI
# layout followed by umoci unpack. Medians of 3 runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
go test -c -o "$work/pull.test" ./image/pull/
out=$(cd image/pull && "$work/pull.test" -test.run '^$' -test.bench '^Benchmark(PullUnpack|SkopeoUmoci)$' -test.benchtime 5x -test.count 3)
echo "$out" | grep '^Benchmark'
# metric <benchmark>: the median ns/op of the runs
metric() {
  echo "$out" | awk -v b="Benchmark$1-" 'index($1, b) == 1 { for (i = 1; i < NF; i++) if ($(i+1) == "ns/op") print $i }' |
    sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}
ours=$(metric PullUnpack); ref=$(metric SkopeoUmoci)
if [ -z "$ref" ]; then
  echo "skopeo/umoci reference skipped (not installed or not root)"; exit 1
fi
ms() { awk -v a="$1" 'BEGIN { printf "%.0f", a / 1e6 }'; }
echo "pull + unpack (image/pull):    $(ms "$ours") ms"
echo "skopeo copy + umoci unpack:    $(ms "$ref") ms"
echo "ours / reference:              $(awk -v a="$ours" -v b="$ref" 'BEGIN { printf "%.2f", a / b }')x (goal <= 1.0)"
