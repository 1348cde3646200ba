#!/usr/bin/env bash
# Agent benchmark: create+start+wait+delete of /bin/true through the agent's
# ttrpc API against `runc run` (Debian runc) on the same busybox bundle, same
# run, medians and p95 of 3 rounds of 50; goal: ratio <= 1.0. Also the
# agent's RSS idle and after 100 containers. Needs root (containers).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "$(id -u)" != 0 ]; then
  echo "agent benchmark needs root: skipped"
  exit 0
fi
pkg=./agent/cmd/cocoon-agent/
# The agent side runs the production binary when `make build` made one,
# otherwise the test binary acting as the agent.
if [ -x bin/cocoon-agent ]; then
  export COCOON_AGENT_BIN=$PWD/bin/cocoon-agent
  echo "agent binary: bin/cocoon-agent"
fi
lat=$(go test -run '^$' -bench 'BenchmarkTrue' -benchtime 50x -count 3 "$pkg")
rss=$(go test -run '^$' -bench 'BenchmarkAgentRSS' -benchtime 1x "$pkg")
awk '
  function med(a, n,   i, j, t) { for (i = 0; i < n; i++) for (j = i + 1; j < n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t } return a[int(n / 2)] }
  function metric(name,   i) { for (i = 3; i < NF; i++) if ($(i + 1) == name) return $i; return -1 }
  /^BenchmarkTrue\/agent/ { a50[na] = metric("p50-ms"); a95[na++] = metric("p95-ms") }
  /^BenchmarkTrue\/runc/  { r50[nr] = metric("p50-ms"); r95[nr++] = metric("p95-ms") }
  /^BenchmarkAgentRSS/    { idle = metric("idle-rss-MiB"); after = metric("rss-after-100-MiB") }
  END {
    if (na == 0 || nr == 0) { print "agent benchmark produced no results"; exit 1 }
    ma = med(a50, na); mr = med(r50, nr); pa = med(a95, na); pr = med(r95, nr)
    printf "agent create+start+wait+delete /bin/true: p50 %.1f ms  p95 %.1f ms\n", ma, pa
    printf "runc run (same bundle):                   p50 %.1f ms  p95 %.1f ms\n", mr, pr
    printf "ratio p50: %.2f  p95: %.2f (goal <= 1.0)\n", ma / mr, pa / pr
    printf "agent RSS idle: %.1f MiB, after 100 containers: %.1f MiB\n", idle, after
  }' <<<"$lat"$'\n'"$rss"
