#!/usr/bin/env bash
# Policy benchmark: per-request evaluation in process (encode + evaluate +
# state ops) against the same policy in an OPA server over HTTP on loopback,
# and against OPA's bare evaluation of the same prepared query, same run.
set -euo pipefail
cd "$(dirname "$0")/../.."
OPA_VERSION=v1.22.3
opa=.tools/bin/opa
if [ ! -x "$opa" ] || ! "$opa" version 2>/dev/null | grep -q "${OPA_VERSION#v}"; then
  echo "installing opa $OPA_VERSION"
  GOBIN="$PWD/.tools/bin" go install "github.com/open-policy-agent/opa@$OPA_VERSION"
fi
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
COCOON_WRITE_BIG_POLICY="$work/genpolicy.rego" go test -count=1 -run TestWriteBigPolicy ./agent/policy/ >/dev/null
cp agent/policy/testdata/allow-all.rego "$work/allow-all.rego"

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start() {
  local p; p=$(port)
  "$opa" run --server --addr "127.0.0.1:$p" --log-level error "$1" >"$work/opa-$p.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$p/health" >/dev/null 2>&1 && break; sleep 0.1; done
  echo "http://127.0.0.1:$p"
}
export OPA_URL_ALLOW_ALL; OPA_URL_ALLOW_ALL=$(start "$work/allow-all.rego")
export OPA_URL_GENPOLICY; OPA_URL_GENPOLICY=$(start "$work/genpolicy.rego")

# One process per benchmark, so that each RSS figure is that policy's alone.
go test -c -o "$work/policy.test" ./agent/policy/
out=$(cd agent/policy && for b in AllowAllInProcess AllowAllEvaluated GenpolicyInProcess AllowAllBareOPA GenpolicyBareOPA AllowAllServer GenpolicyServer; do
  "$work/policy.test" -test.run '^$' -test.bench "^Benchmark$b\$" -test.benchtime 1000x
done)
echo "$out" | grep '^Benchmark'
metric() { echo "$out" | awk -v b="Benchmark$1-" -v m="$2" 'index($1, b) == 1 { for (i = 1; i < NF; i++) if ($(i+1) == m) print $i }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
# <label> <in-process benchmark> <reference prefix>
row() {
  local ip sp bp ip95 sp95
  ip=$(metric "$2" p50-us); ip95=$(metric "$2" p95-us)
  sp=$(metric "${3}Server" p50-us); sp95=$(metric "${3}Server" p95-us); bp=$(metric "${3}BareOPA" p50-us)
  echo "$1: in-process p50 ${ip} us p95 ${ip95} us; OPA server p50 ${sp} us p95 ${sp95} us; bare OPA p50 ${bp} us"
  echo "$1: server/in-process p50 $(ratio "$sp" "$ip") p95 $(ratio "$sp95" "$ip95"); in-process/bare-OPA p50 $(ratio "$ip" "$bp"); RSS $(metric "$2" rss-MiB) MiB"
}
row "allow-all (gate: constant default)" AllowAllInProcess AllowAll
row "allow-all (evaluated in full)" AllowAllEvaluated AllowAll
row "genpolicy-sized ($(metric GenpolicyInProcess policy-KiB) KiB)" GenpolicyInProcess Genpolicy
echo "goals: allow-all server/in-process >= 10; genpolicy p50 < 1000 us and server/in-process >= 1.5; genpolicy in-process/bare-OPA <= 1.20"
