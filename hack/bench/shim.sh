#!/usr/bin/env bash
# Shim benchmark (BenchmarkCtrRun in shim/cmd/containerd-shim-cocoon-v2):
# `ctr run --rm` of busybox `true` under a private containerd 1.6, the
# variants alternating in every round:
#   - our runtime with the process launcher against io.containerd.runc.v2
#     (goal process/runc <= 1.5);
#   - our runtime booting a QEMU TCG guest per container against the QEMU
#     launcher's bare boot of the same image to an answered Health
#     (goal qemu/bare <= 1.3).
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${SHIM_BENCH_ROUNDS:-5}
out=$(go test -run '^$' -bench '^BenchmarkCtrRun$' -benchtime "${rounds}x" -timeout 30m ./shim/cmd/containerd-shim-cocoon-v2) || { echo "$out"; exit 1; }
line=$(grep '^BenchmarkCtrRun' <<<"$out") || { echo "$out"; exit 1; }
pairs=$(awk '{for (i = 3; i < NF; i += 2) print $(i+1), $i}' <<<"$line")
get() { awk -v k="$1" '$1 == k {print $2}' <<<"$pairs"; }
echo "rounds: $rounds (median of each)"
printf 'ctr run --rm true, runc.v2:        %ss\n' "$(get runc-s)"
printf 'ctr run --rm true, cocoon process: %ss\n' "$(get process-s)"
printf 'ratio process/runc:                %s (goal <= 1.5)\n' "$(get process/runc)"
printf 'ctr run --rm true, cocoon qemu:    %ss\n' "$(get qemu-s)"
printf 'bare launcher boot to Health:      %ss\n' "$(get bare-boot-s)"
printf 'ratio qemu/bare:                   %s (goal <= 1.3)\n' "$(get qemu/bare)"
