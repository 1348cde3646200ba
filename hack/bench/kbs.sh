#!/usr/bin/env bash
# Secret release benchmark, each against a floor measured in the same run:
# a plain HTTPS GET of the same resource bytes from a trivial loopback HTTPS
# server. (1) A guest's full auth + attest + resource round trip with the
# reference KBS over TLS on loopback (simulated SNP evidence, real
# verification, Rego, JWT, JWE), p50 and p95, against one GET. (2) The
# workload endpoint's requests per second for /cdh/resource with a cached
# KBS token, against the same number of concurrent GETs. Medians of 3 runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
go test -c -o "$work/endpoint.test" ./kbs-client/endpoint/
out=$(cd kbs-client/endpoint && {
  "$work/endpoint.test" -test.run '^$' -test.bench '^BenchmarkRoundTrip(Floor)?$' -test.benchtime 300x -test.count 3
  "$work/endpoint.test" -test.run '^$' -test.bench '^BenchmarkEndpoint(Cached|Floor)$' -test.benchtime 3000x -test.count 3
})
echo "$out" | grep '^Benchmark'
# metric <benchmark> <unit>: the median of the runs
metric() {
  echo "$out" | awk -v b="Benchmark$1-" -v m="$2" 'index($1, b) == 1 { for (i = 1; i < NF; i++) if ($(i+1) == m) print $i }' |
    sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", a / b }'; }
rt50=$(metric RoundTrip p50-us); rt95=$(metric RoundTrip p95-us)
fl50=$(metric RoundTripFloor p50-us); fl95=$(metric RoundTripFloor p95-us)
ep=$(metric EndpointCached req/s); epf=$(metric EndpointFloor req/s)
echo "round trip auth+attest+resource: p50 ${rt50} us, p95 ${rt95} us"
echo "floor (one HTTPS GET):           p50 ${fl50} us, p95 ${fl95} us"
echo "round trip / floor:              p50 $(ratio "$rt50" "$fl50")x, p95 $(ratio "$rt95" "$fl95")x"
echo "endpoint, cached token:          ${ep} req/s"
echo "floor (concurrent HTTPS GETs):   ${epf} req/s"
echo "floor / endpoint:                $(ratio "$epf" "$ep")x"
