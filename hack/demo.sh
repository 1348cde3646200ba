#!/usr/bin/env bash
# make demo: runs the most complete path that exists today and says plainly
# what is not there yet. Target: a confidential pod in a QEMU guest that
# attests to the reference KBS and prints its secret.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/bin:$PWD/.tools/bin:$PATH"
work=$(mktemp -d)
kbs_pid=
cleanup() { [ -n "$kbs_pid" ] && kill "$kbs_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

echo "== 1. The pod's policy and its hash (HOST_DATA)"
cat > "$work/pod-policy.rego" <<'REGO'
package agent_policy

import rego.v1

default CreateContainerRequest := true
default StartContainerRequest := true
default ExecProcessRequest := false
REGO
host_data=$(sha256sum "$work/pod-policy.rego" | cut -d' ' -f1)
measurement=$(printf 'cocoon-demo-guest' | sha384sum | cut -d' ' -f1)
echo "policy sha256 = HOST_DATA: $host_data"

echo "== 2. The agent policy refuses exec (policy eval of a recorded request)"
echo '{"container_id":"web","exec_id":"sh","string_user":null,"process":null}' > "$work/exec.json"
if cocoon-policy eval --policy "$work/pod-policy.rego" --request "$work/exec.json" --kind ExecProcessRequest; then
  echo "unexpected: exec allowed"; exit 1
else
  echo "exec refused by policy: ok"
fi

echo "== 3. Reference KBS on loopback with one secret, released only to HOST_DATA=$host_data"
mkdir -p "$work/repo/default/key"
printf 'the-demo-secret\n' > "$work/repo/default/key/1"
cat > "$work/resource-policy.rego" <<REGO
package policy
import rego.v1
default allow := false
allow if {
	input.claims.host_data == "$host_data"
	input.claims.measurement == "$measurement"
	not input.claims.policy.debug
}
REGO
cocoon-kbs --listen 127.0.0.1:18080 --repository "$work/repo" --policy "$work/resource-policy.rego" \
  --trust-simulated-snp --insecure-http 2>"$work/kbs.log" &
kbs_pid=$!
for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:18080/ && break; sleep 0.1; done

echo "== 4. A guest with the right policy attests (simulated SNP) and gets the secret"
secret=$(kbs-client --url http://127.0.0.1:18080 --tee simulated --host-data "$host_data" --measurement "$measurement" get-resource --path default/key/1)
echo "secret received: $secret"

echo "== 5. A guest launched with a modified policy gets nothing"
bad=$(printf 'package agent_policy\ndefault ExecProcessRequest := true\n' | sha256sum | cut -d' ' -f1)
if kbs-client --url http://127.0.0.1:18080 --tee simulated --host-data "$bad" --measurement "$measurement" get-resource --path default/key/1 2>"$work/denied.txt"; then
  echo "unexpected: secret released"; exit 1
fi
echo "refused: $(cat "$work/denied.txt")"

echo
echo "Not there yet (open issues): the guest agent server and PID 1, the VM launchers,"
echo "the containerd shim and guest images. When they land, this target boots a QEMU guest"
echo "from the cocoon-rootfs initrd and runs the pod under containerd."
