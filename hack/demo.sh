#!/usr/bin/env bash
# make demo: the main job on embedded defaults (make deps and make build ran
# first). A private containerd runs a confidential pod in a QEMU guest (KVM
# when usable, TCG otherwise; simulated SNP) whose image arrives as a
# dm-verity layer; the workload gets its secret from the reference KBS;
# exec is refused by its policy; a pod with a modified policy gets nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/bin:$PWD/.tools/bin:$PATH"
if [ "$(id -u)" -ne 0 ]; then
  echo "make demo boots VMs and mounts: run it as root" >&2
  exit 1
fi
bin/cocoon-demo --bin bin
