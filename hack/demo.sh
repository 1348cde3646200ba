#!/usr/bin/env bash
# make demo: runs the most complete path that exists today and says plainly
# what is not there yet. The target is a confidential pod that attests to the
# reference KBS and prints its secret (see docs/architecture.md).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/bin:$PWD/.tools/bin:$PATH"

echo "== Cocoon demo"
echo "What exists now: the Kata-compatible agent API (rpc/) and its transports."
echo "Running the agent API over each transport the host and guest use:"
go test -count=1 -v -run 'TestUnixRoundTrip|TestHybridVsockHandshake|TestSerialRoundTripOverPty|TestAgentServiceMatchesUpstream' \
  ./rpc/... 2>&1 | grep -E '^(=== RUN|--- |ok|FAIL)'
echo
echo "Not there yet (open issues): the guest agent, the policy engine, SNP attestation,"
echo "the rootfs builder, the KBS, the VM launchers, the containerd shim and guest images."
echo "When they land, this target starts the reference KBS, a private containerd with the"
echo "Cocoon runtime (QEMU TCG, simulated SNP) and a confidential pod that prints its secret."
