#!/usr/bin/env bash
# Attestation benchmark: full verification of one report with a warm VCEK
# cache against its primitives (one ECDSA P-384 verify + the certificate
# chain's signature checks), same run. Goal: ratio <= 1.5, 0 KDS fetches warm.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=$(go test -run '^$' -bench 'BenchmarkVerifyWarm|BenchmarkPrimitives' -benchtime 300x -count 3 ./attestation/ 2>/dev/null)
awk '
  /^BenchmarkVerifyWarm/ { v[nv++] = $3; f += $5 }
  /^BenchmarkPrimitives/ { p[np++] = $3 }
  function med(a, n,   i, j, t) { for (i = 0; i < n; i++) for (j = i + 1; j < n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t } return a[int(n / 2)] }
  END {
    mv = med(v, nv); mp = med(p, np)
    printf "verify (warm cache):  %.0f us/op\n", mv / 1000
    printf "primitives:           %.0f us/op\n", mp / 1000
    printf "ratio:                %.2f (goal <= 1.5)\n", mv / mp
    printf "KDS fetches warm:     %d\n", f
  }' <<<"$out"
