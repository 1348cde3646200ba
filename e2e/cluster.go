package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/cocoon-containers/cocoon/hostvmm"
	"github.com/cocoon-containers/cocoon/hostvmm/qemu"
	"github.com/cocoon-containers/cocoon/hostvmm/vmtest"
	"github.com/cocoon-containers/cocoon/rootfs"
	"github.com/cocoon-containers/cocoon/shim/shimtest"
)

// PodPolicyFor is the pod owner's policy for pods run by containerd: every
// request the shim sends, the container only from verity layers whose root
// hashes are exactly layerHashes (bottom layer first, as cocoon-rootfs
// layers prints them) stacked in that order, and no exec.
func PodPolicyFor(layerHashes []string) string {
	p := string(rootfs.AllowAllPolicy())
	p = strings.Replace(p, "default ExecProcessRequest := true", "default ExecProcessRequest := false", 1)
	p = strings.Replace(p, "default CreateContainerRequest := true", "default CreateContainerRequest := false", 1)
	quoted := make([]string, len(layerHashes))
	for i, h := range layerHashes {
		quoted[i] = strconv.Quote(h)
	}
	return p + `
# The image's layers, bottom first: the dm-verity root hash of each.
layer_hashes := [` + strings.Join(quoted, ", ") + `]

# The rootfs is an overlay of one verity layer per image layer, each with
# the root hash of its place in the image, over a writable guest tmpfs.
CreateContainerRequest {
	layers := [s | s := input.storages[_]; s.driver == "mmioblk"]
	count(layers) == count(layer_hashes)
	matched := {i | layer_hashes[i]; layers[i].options[_] == concat("", ["io.katacontainers.fs-opt.root-hash=", layer_hashes[i]])}
	count(matched) == count(layer_hashes)
	top_first := [layers[j].mount_point | layers[i]; j := count(layers) - 1 - i]
	root := input.storages[_]
	root.driver == "overlayfs"
	root.mount_point == input.OCI.Root.Path
	root.options[_] == concat("", ["lowerdir=", concat(":", top_first)])
	input.OCI.Root.Path == concat("", ["/run/kata-containers/shared/containers/", input.container_id, "/rootfs"])
	count([s | s := input.storages[_]; not allowed_driver[s.driver]]) == 0
}

allowed_driver := {"mmioblk", "ephemeral", "local", "overlayfs"}
`
}

// Cluster is a private containerd with Cocoon's runtime configured for
// confidential pods under QEMU (simulated SNP), the guest image, and the
// reference KBS.
type Cluster struct {
	Containerd *shimtest.Containerd
	Manifest   *rootfs.Manifest
	// LayerHashes are the dm-verity root hashes of the workload image's
	// layers, bottom first, as cocoon-rootfs layers predicts them from
	// the image; the shim packs containerd's snapshots to the same.
	LayerHashes []string
	// Policy is the pod's policy; HostData its SHA-256.
	Policy   string
	HostData [32]byte
	KBSLogs  *syncBuffer
	config   string
	kbs      *http.Server
	dir      string
}

// StartCluster builds the shim and the agent into dir, starts containerd
// and imports the busybox workload image, computes the image's root hash,
// builds the guest image whose measured command line names the KBS as the
// guest reaches it, and starts the KBS with a resource policy that
// requires the predicted MEASUREMENT and the pod policy's HOST_DATA.
func StartCluster(ctx context.Context, dir string, binDir string) (*Cluster, error) {
	cl := &Cluster{dir: dir, KBSLogs: &syncBuffer{}}
	if binDir == "" {
		binDir = filepath.Join(dir, "bin")
		if err := shimtest.BuildShim(ctx, binDir, "github.com/cocoon-containers/cocoon/shim/cmd/containerd-shim-cocoon-v2"); err != nil {
			return nil, err
		}
		if _, err := vmtest.BuildAgent(ctx, binDir); err != nil {
			return nil, err
		}
	}
	c := &shimtest.Containerd{Dir: filepath.Join(dir, "containerd"), BinDir: binDir}
	if err := c.Start(ctx); err != nil {
		return nil, err
	}
	cl.Containerd = c
	if err := c.ImportBusybox(ctx); err != nil {
		cl.Close()
		return nil, err
	}
	// The policy author's view: the image as an OCI layout, not what
	// containerd unpacked.
	layoutDir := filepath.Join(dir, "image-layout")
	if err := untar(filepath.Join(c.Dir, "busybox-oci.tar"), layoutDir); err != nil {
		cl.Close()
		return nil, err
	}
	ls, err := rootfs.LayerImagesFromLayout(ctx, layoutDir, shimtest.BusyboxImageName, filepath.Join(dir, "expected-layers"))
	if err != nil {
		cl.Close()
		return nil, err
	}
	for _, l := range ls {
		cl.LayerHashes = append(cl.LayerHashes, hex.EncodeToString(l.RootHash))
	}
	cl.Policy = PodPolicyFor(cl.LayerHashes)
	cl.HostData = sha256.Sum256([]byte(cl.Policy))

	params := strings.Join([]string{"console=ttyS0", "quiet", "panic=-1",
		"agent.server_addr=serial://" + hostvmm.AgentChannel, "tsc_early_khz=" + strconv.Itoa(qemu.TSCKHz())}, " ")
	guest := filepath.Join(dir, "guest")
	m, err := rootfs.Build(ctx, &rootfs.Config{
		Agent: filepath.Join(binDir, "cocoon-agent"), Kernel: "linux-image-amd64", KernelCache: vmtest.KernelCache,
		DefaultPolicy: "allow-only-setpolicy",
		// The shim appends the KBS URL as the guest reaches it.
		Cmdline: params + " cocoon.kbs_url=http://" + hostvmm.ServiceIP + ":8080",
	}, guest, nil)
	if err != nil {
		cl.Close()
		return nil, err
	}
	cl.Manifest = m
	kbsAddr, err := cl.startKBS(ctx)
	if err != nil {
		cl.Close()
		return nil, err
	}
	cl.config = filepath.Join(dir, "configuration.toml")
	body := fmt.Sprintf(`[sandbox]
launcher = "qemu"
kernel = %q
initrd = %q
shared_fs = "none"
confidential = "simulated"
memory_mib = 512
kernel_params = %q
state_dir = %q

[kbs]
url = "http://%s"
`, filepath.Join(guest, rootfs.KernelFile), filepath.Join(guest, rootfs.InitrdFile), params, filepath.Join(dir, "sandboxes"), kbsAddr)
	if err := os.WriteFile(cl.config, []byte(body), 0o600); err != nil {
		cl.Close()
		return nil, err
	}
	return cl, nil
}

// ResourcePolicy is the KBS's rule for default/key/1: the guest image the
// manifest predicts, running the pod policy, not debuggable.
func (cl *Cluster) ResourcePolicy() string {
	return resourcePolicy(cl.Manifest.ReferenceValues.SimulatedMeasurement, cl.HostData)
}

func (cl *Cluster) startKBS(ctx context.Context) (string, error) {
	srv, addr, err := startKBS(ctx, filepath.Join(cl.dir, "kbs-repository"), cl.ResourcePolicy(), cl.KBSLogs)
	if err != nil {
		return "", err
	}
	cl.kbs = srv
	return addr, nil
}

// StopKBS stops the KBS.
func (cl *Cluster) StopKBS() {
	if cl.kbs != nil {
		cl.kbs.Close()
	}
}

// Close stops the KBS and containerd (with every task of the namespace).
func (cl *Cluster) Close() {
	cl.StopKBS()
	if cl.Containerd != nil {
		cl.Containerd.Cleanup(context.Background())
	}
}

// annotation is the policy annotation for policy.
func annotation(policy string) string {
	return "io.katacontainers.config.agent.policy=" + base64.StdEncoding.EncodeToString([]byte(policy))
}

// RunWorkload runs the workload container as a pod of its own with policy
// (`ctr run --rm`) and returns what it printed.
func (cl *Cluster) RunWorkload(ctx context.Context, id, policy string) (string, error) {
	return cl.Run(ctx, id, policy, "sh", "-c", WorkloadCommand)
}

// Run runs args in a busybox container that is a pod of its own with
// policy (`ctr run --rm`) and returns what it printed.
func (cl *Cluster) Run(ctx context.Context, id, policy string, args ...string) (string, error) {
	cmd := append([]string{"run", "--rm", "--runtime", "io.containerd.cocoon.v2", "--runtime-config-path", cl.config,
		"--annotation", annotation(policy), shimtest.BusyboxImageName, id}, args...)
	out, _, err := cl.Containerd.Ctr(ctx, cmd...)
	return out, err
}

// StartIdle starts a long-running container with policy (`ctr run -d`).
func (cl *Cluster) StartIdle(ctx context.Context, id, policy string) error {
	_, _, err := cl.Containerd.Ctr(ctx, "run", "-d", "--runtime", "io.containerd.cocoon.v2", "--runtime-config-path", cl.config,
		"--annotation", annotation(policy), shimtest.BusyboxImageName, id, "sleep", "1000")
	return err
}

// Exec tries `ctr task exec` in container id.
func (cl *Cluster) Exec(ctx context.Context, id string) error {
	_, _, err := cl.Containerd.Ctr(ctx, "tasks", "exec", "--exec-id", "debug", id, "cat", "/proc/self/environ")
	return err
}

// Remove kills and deletes container id.
func (cl *Cluster) Remove(ctx context.Context, id string) {
	c := cl.Containerd
	c.Ctr(ctx, "tasks", "kill", "-s", "SIGKILL", id)
	for i := 0; i < 100; i++ {
		if out, _, _ := c.Ctr(ctx, "tasks", "ls"); !strings.Contains(out, id+" ") || strings.Contains(out, "STOPPED") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.Ctr(ctx, "tasks", "delete", "--force", id)
	c.Ctr(ctx, "containers", "delete", id)
}

// SandboxesDir holds the pods' state on the host.
func (cl *Cluster) SandboxesDir() string { return filepath.Join(cl.dir, "sandboxes") }

// untar unpacks a tarball this package wrote.
func untar(src, dst string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	if out, err := exec.Command("tar", "-xf", src, "-C", dst).CombinedOutput(); err != nil {
		return fmt.Errorf("untar %s: %v: %s", src, err, out)
	}
	return nil
}
