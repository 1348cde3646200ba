#!/usr/bin/env bash
# VM launcher benchmark: boot-to-agent-ready under QEMU TCG (no KVM here),
# measured from launching QEMU to the first answered Health.Version, the
# variants alternating in every round (BenchmarkBootToAgentReady in
# hostvmm/qemu):
#   - hello init through the launcher against the same image started by a
#     bare qemu-system-x86_64 command: the launcher's overhead;
#   - when the agent is built (bin/cocoon-agent, or agent/cmd/cocoon-agent
#     buildable), the agent against the hello init on the same kernel,
#     modules and initrd size: goal agent/hello <= 1.10.
# Prints median seconds and ratios.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${HOSTVMM_BENCH_ROUNDS:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

agent=""
if [ -x bin/cocoon-agent ]; then
  agent=$PWD/bin/cocoon-agent
elif [ -d agent/cmd/cocoon-agent ]; then
  # built the way make build does
  if CGO_ENABLED=1 go build -trimpath -ldflags '-s -w -extldflags -static' -tags 'netgo osusergo simulated' \
      -o "$work/cocoon-agent" ./agent/cmd/cocoon-agent; then
    agent=$work/cocoon-agent
  fi
fi
[ -n "$agent" ] || echo "agent not built yet: measuring the launcher against bare QEMU only"

out=$(COCOON_BENCH_AGENT=$agent go test -run '^$' -bench '^BenchmarkBootToAgentReady$' \
  -benchtime "${rounds}x" -timeout 60m ./hostvmm/qemu) || { echo "$out"; exit 1; }
line=$(grep '^BenchmarkBootToAgentReady' <<<"$out") || { echo "$out"; exit 1; }
# "name N v unit v unit ..." -> one "unit value" pair per line
pairs=$(awk '{for (i = 3; i < NF; i += 2) print $(i+1), $i}' <<<"$line")
get() { awk -v k="$1" '$1 == k {print $2}' <<<"$pairs"; }
echo "rounds: $rounds (median of each)"
printf 'hello init, bare qemu:  %ss\n' "$(get hello-raw-s)"
printf 'hello init, launcher:   %ss\n' "$(get hello-launcher-s)"
printf 'ratio launcher/bare:    %s\n' "$(get launcher/raw)"
if [ -n "$agent" ] && [ -z "$(get agent/hello)" ]; then
  echo "agent: did not become ready, no agent/hello ratio:"
  sed -n '/did not become ready/,$p' <<<"$out" | grep -v '^\(PASS\|ok \)' | head -40
fi
if [ -n "$(get agent/hello)" ]; then
  printf 'agent, launcher:        %ss\n' "$(get agent-launcher-s)"
  printf 'ratio agent/hello:      %s (goal <= 1.10)\n' "$(get agent/hello)"
fi
