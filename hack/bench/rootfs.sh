#!/usr/bin/env bash
# rootfs builder benchmark: our initrd build against cpio+gzip over the same
# tree, and our dm-verity format of 256 MiB against veritysetup format, in the
# same run. Prints medians of 3 runs and the ratios.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
agent=bin/cocoon-agent
[ -x "$agent" ] || agent=bin/cocoon-rootfs
cache=/var/cache/cocoon/kernel
bin/cocoon-rootfs kernel fetch --out "$cache" >/dev/null 2>&1
kdir=$(dirname "$(dirname "$(ls -d $cache/linux-image-*-amd64/lib/modules/*)")")
kdir=$(dirname "$kdir")
cat > "$work/build.toml" <<TOML
agent = "$PWD/$agent"
kernel = "$kdir"
cmdline = "console=ttyS0"
TOML

now() { date +%s%N; }
median() { sort -n | sed -n 2p; }
run3() { for _ in 1 2 3; do s=$(now); "$@" >/dev/null 2>&1; echo $(( ($(now) - s) / 1000000 )); done | median; }

ours_initrd=$(run3 bin/cocoon-rootfs build --config "$work/build.toml" --out "$work/out")
mkdir -p "$work/tree" && (cd "$work/tree" && gzip -dc "$work/out/cocoon-initrd.img" | cpio -id --quiet)
ref_initrd=$(run3 sh -c "cd '$work/tree' && find . | sort | cpio -o -H newc --quiet | gzip -9 > '$work/ref.img'")
size=$(stat -c %s "$work/out/cocoon-initrd.img")

truncate -s 0 "$work/data" && head -c $((256 << 20)) /dev/urandom > "$work/data"
ours_verity=$(run3 bin/cocoon-rootfs verity format "$work/data" "$work/h1" --salt 00112233)
ref_verity=$(run3 veritysetup format "$work/data" "$work/h2" --salt 00112233)

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo "initrd build:        cocoon-rootfs ${ours_initrd} ms, cpio+gzip ${ref_initrd} ms, ratio $(ratio "$ours_initrd" "$ref_initrd")"
echo "initrd size:         ${size} bytes"
echo "verity 256 MiB:      cocoon-rootfs ${ours_verity} ms, veritysetup ${ref_verity} ms, ratio $(ratio "$ours_verity" "$ref_verity")"
