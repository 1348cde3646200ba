#!/usr/bin/env bash
# rootfs builder benchmark, ours against the standard tools on the same
# inputs in the same run:
#   - the initrd build (module resolution, cpio newc, gzip) against
#     `find | sort | cpio -o -H newc | gzip -n` over the unpacked initrd tree;
#   - dm-verity over 256 MiB against `veritysetup format`, same salt.
# Prints medians of 3 runs, the ratios (ours / reference) and the initrd size.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -x bin/cocoon-rootfs ] || { echo "bin/cocoon-rootfs missing: run make build" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Any static cgo binary passes the agent check; the agent when it is built.
agent=bin/cocoon-agent
[ -x "$agent" ] || agent=bin/cocoon-rootfs
cache=${COCOON_KERNEL_CACHE:-/var/cache/cocoon/kernel}
# Download and unpack Debian's kernel once (not timed); the timed builds take
# the unpacked tree, as the reference takes the unpacked initrd tree. (Naming
# the package instead adds an `apt-cache depends` lookup, about 1 s here.)
kdir=$(bin/cocoon-rootfs kernel fetch --out "$cache" 2>/dev/null | sed -n 's|^vmlinuz: \(.*\)/boot/vmlinuz-.*|\1|p')
[ -d "$kdir" ] || { echo "kernel fetch failed" >&2; exit 1; }
build=(bin/cocoon-rootfs build --agent "$agent" --kernel "$kdir" --cmdline console=ttyS0)

now() { date +%s%N; }
median() { sort -n | sed -n 2p; }
run3() { for _ in 1 2 3; do s=$(now); "$@" >/dev/null 2>&1; echo $(( ($(now) - s) / 1000000 )); done | median; }

ours_initrd=$(run3 "${build[@]}" --out "$work/out")
mkdir -p "$work/tree" && (cd "$work/tree" && gzip -dc "$work/out/cocoon-initrd.img" | cpio -id --quiet)
ref_initrd=$(run3 sh -c "cd '$work/tree' && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -n > '$work/ref.img'")
size=$(stat -c %s "$work/out/cocoon-initrd.img")
ref_size=$(stat -c %s "$work/ref.img")

head -c $((256 << 20)) /dev/urandom > "$work/data"
ours_verity=$(run3 bin/cocoon-rootfs verity format "$work/data" "$work/h1" --salt 00112233)
ref_verity=$(run3 veritysetup format "$work/data" "$work/h2" --salt 00112233)
cmp -s "$work/h1" "$work/h2" --ignore-initial=4096:4096 || { echo "hash trees differ" >&2; exit 1; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo "initrd build:   cocoon-rootfs ${ours_initrd} ms, cpio+gzip ${ref_initrd} ms, ratio $(ratio "$ours_initrd" "$ref_initrd")"
echo "initrd size:    ${size} bytes (cpio+gzip: ${ref_size} bytes)"
echo "verity 256 MiB: cocoon-rootfs ${ours_verity} ms, veritysetup ${ref_verity} ms, ratio $(ratio "$ours_verity" "$ref_verity")"
