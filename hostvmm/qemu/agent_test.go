package qemu

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cocoon-containers/cocoon/agent/agenttest"
	"github.com/cocoon-containers/cocoon/hostvmm"
	"github.com/cocoon-containers/cocoon/hostvmm/vmtest"
	"github.com/cocoon-containers/cocoon/rootfs"
	"github.com/cocoon-containers/cocoon/rpc/agentpb"
)

// agentImage builds the real agent and the standard guest image once per
// package run.
func agentImage(t *testing.T) *vmtest.Image { return vmtest.SharedAgentImage(t) }

// startAgentVM boots cfg under TCG and connects to its agent. The console
// is logged if the test fails; the VM and the connection go at cleanup.
func startAgentVM(t *testing.T, cfg hostvmm.Config) (hostvmm.Sandbox, *ttrpc.Client) {
	t.Helper()
	l := &Launcher{Accel: "tcg", QuitTimeout: time.Minute}
	sb, err := l.Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("console:\n%s", readFile(sb.ConsoleLog()))
		}
		sb.Cleanup()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	conn, err := sb.DialAgent(ctx)
	if err != nil {
		t.Fatalf("dial agent: %v", err)
	}
	c := ttrpc.NewClient(conn)
	t.Cleanup(func() { c.Close() })
	return sb, c
}

// kataSharedDir is where the Kata runtime mounts the sandbox's shared
// directory in the guest; container rootfs paths sit under it.
const kataSharedDir = "/run/kata-containers/shared/containers/"

// TestAgentInVM boots the standard guest image (the real agent as PID 1)
// under TCG and drives it the way the shim does: Health over the
// virtio-serial channel, a sandbox whose shared directory arrives over 9p,
// a busybox container whose output and exit code come back, an exec into
// it, and DestroySandbox, after which the agent powers the VM off and
// nothing is left on the host.
func TestAgentInVM(t *testing.T) {
	vmtest.RequireRoot(t)
	img := agentImage(t)

	share := shortTempDir(t)
	rootfs := agenttest.BusyboxRootfs(t, share, "c1")
	state := filepath.Join(shortTempDir(t), "state")
	sb, c := startAgentVM(t, hostvmm.Config{
		ID: "agent-vm", StateDir: state, Kernel: img.Kernel, Initrd: img.Initrd,
		Cmdline:    "console=ttyS0 quiet panic=-1 agent.log=debug",
		SharedDirs: []hostvmm.SharedDir{{Tag: "kataShared", HostPath: share}},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	v, err := agentpb.NewHealthClient(c).Version(ctx, &agentpb.CheckRequest{})
	if err != nil {
		t.Fatalf("Health.Version: %v", err)
	}
	if v.AgentVersion == "" || strings.HasPrefix(v.AgentVersion, "hello-") {
		t.Errorf("agent version %q: not the cocoon agent", v.AgentVersion)
	}
	agent := agentpb.NewAgentServiceClient(c)
	shared := &agentpb.Storage{Driver: "9p", Source: "kataShared", Fstype: "9p",
		Options: []string{"trans=virtio", "version=9p2000.L", "msize=262144", "nodev"}, MountPoint: kataSharedDir}
	if _, err := agent.CreateSandbox(ctx, &agentpb.CreateSandboxRequest{Hostname: "vmpod", SandboxId: "sb1",
		Storages: []*agentpb.Storage{shared}}); err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	guestRoot := kataSharedDir + strings.TrimPrefix(rootfs, share+"/")
	spec := agenttest.Spec(guestRoot, "sh", "-c", "read line; echo \"$line from $(hostname) pid $$\"; exit 3")
	if _, err := agent.CreateContainer(ctx, &agentpb.CreateContainerRequest{ContainerId: "c1", ExecId: "c1", OCI: spec}); err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	if _, err := agent.StartContainer(ctx, &agentpb.StartContainerRequest{ContainerId: "c1"}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
	execOut := runExec(ctx, t, agent, "c1", "e1", "cat", "/proc/1/cgroup")
	if !strings.Contains(execOut, "0::/") {
		t.Errorf("exec output %q: want the container's cgroup v2 path", execOut)
	}
	if _, err := agent.WriteStdin(ctx, &agentpb.WriteStreamRequest{ContainerId: "c1", ExecId: "c1", Data: []byte("hi\n")}); err != nil {
		t.Fatalf("WriteStdin: %v", err)
	}
	out := readAll(ctx, t, agent, "c1", "c1")
	if want := "hi from " + spec.Hostname + " pid 1\n"; out != want {
		t.Errorf("stdout %q, want %q", out, want)
	}
	w, err := agent.WaitProcess(ctx, &agentpb.WaitProcessRequest{ContainerId: "c1", ExecId: "c1"})
	if err != nil || w.Status != 3 {
		t.Fatalf("WaitProcess: %v, status %v; want 3", err, w)
	}
	if _, err := agent.RemoveContainer(ctx, &agentpb.RemoveContainerRequest{ContainerId: "c1"}); err != nil {
		t.Fatalf("RemoveContainer: %v", err)
	}
	if _, err := agent.DestroySandbox(ctx, &agentpb.DestroySandboxRequest{}); err != nil {
		t.Fatalf("DestroySandbox: %v", err)
	}
	e := waitExit(t, sb)
	if got, want := e.Reason, "shutdown (guest-shutdown)"; got != want {
		t.Errorf("exit after DestroySandbox = %q, want %q", got, want)
	}
	console := readFile(sb.ConsoleLog())
	for _, bad := range []string{"Kernel panic", "panic:", "level=ERROR"} {
		if strings.Contains(console, bad) {
			t.Errorf("console shows %q:\n%s", bad, console)
		}
	}
	assertGone(t, sb, state)
}

// runExec runs a process in a container and returns its stdout.
func runExec(ctx context.Context, t *testing.T, agent agentpb.AgentServiceService, cid, eid string, args ...string) string {
	t.Helper()
	spec := agenttest.Spec("/", args...).Process
	if _, err := agent.ExecProcess(ctx, &agentpb.ExecProcessRequest{ContainerId: cid, ExecId: eid, Process: spec}); err != nil {
		t.Fatalf("ExecProcess: %v", err)
	}
	out := readAll(ctx, t, agent, cid, eid)
	w, err := agent.WaitProcess(ctx, &agentpb.WaitProcessRequest{ContainerId: cid, ExecId: eid})
	if err != nil || w.Status != 0 {
		t.Fatalf("exec %v: %v, status %v", args, err, w)
	}
	return out
}

// readAll reads stdout until EOF (empty data).
func readAll(ctx context.Context, t *testing.T, agent agentpb.AgentServiceService, cid, eid string) string {
	t.Helper()
	var b strings.Builder
	for {
		r, err := agent.ReadStdout(ctx, &agentpb.ReadStreamRequest{ContainerId: cid, ExecId: eid, Len: 4096})
		if err != nil {
			t.Fatalf("ReadStdout %s/%s: %v", cid, eid, err)
		}
		if len(r.Data) == 0 {
			return b.String()
		}
		b.Write(r.Data)
	}
}

// TestVerityRootfsInVM boots the agent with a dm-verity protected root
// filesystem image (erofs, hash tree on a second disk, root hash on the
// command line): a container runs from it; then the host flips one byte of
// a file in the image, and the guest refuses to read that file.
func TestVerityRootfsInVM(t *testing.T) {
	vmtest.RequireRoot(t)
	agentImage(t)
	src := shortTempDir(t)
	if err := agenttest.MakeBusyboxRootfs(src); err != nil {
		t.Fatal(err)
	}
	marker := bytes.Repeat([]byte("cocoon-verity-marker-"), 1<<14)
	if err := os.WriteFile(filepath.Join(src, "big"), marker, 0o644); err != nil {
		t.Fatal(err)
	}
	out := shortTempDir(t)
	// The command line names everything the launcher would add, so that
	// the manifest's prediction is the launcher's measurement.
	cmdline := "console=ttyS0 quiet panic=-1 agent.debug_console agent.server_addr=serial://agent.channel.0 tsc_early_khz=" + strconv.Itoa(TSCKHz())
	m, err := rootfs.Build(context.Background(), &rootfs.Config{
		Agent: agentImage(t).Agent, Kernel: "linux-image-amd64", KernelCache: vmtest.KernelCache,
		Verity: &rootfs.VerityConfig{Source: src}, Cmdline: cmdline,
	}, out, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(m.VerityCmdline, "cocoon.rootfs_verity=") {
		t.Fatalf("verity command line %q", m.VerityCmdline)
	}
	image := filepath.Join(out, rootfs.VerityImageFile)
	state := filepath.Join(shortTempDir(t), "state")
	l := &Launcher{Accel: "tcg", QuitTimeout: time.Minute}
	cfg := hostvmm.Config{
		ID: "verity-vm", StateDir: state, Kernel: filepath.Join(out, rootfs.KernelFile), Initrd: filepath.Join(out, rootfs.InitrdFile),
		Image: image, VerityCmdline: m.VerityCmdline, Cmdline: cmdline,
		Disks: []hostvmm.Disk{{Path: filepath.Join(out, rootfs.VerityHashFile), ReadOnly: true}},
	}
	// In simulated mode the launcher's measurement is the manifest's.
	sim := cfg
	sim.Confidential = hostvmm.ConfidentialSimulated
	if err := hostvmm.Validate(&sim, hostvmm.Requirements{Kernel: true}); err != nil {
		t.Fatal(err)
	}
	args, err := l.Args(&sim)
	if err != nil {
		t.Fatal(err)
	}
	if app := strings.Join(argValues(args, "-append"), ""); !strings.Contains(app, " cocoon.sim_measurement="+m.ReferenceValues.SimulatedMeasurement) {
		t.Errorf("launcher command line %q does not carry the manifest's measurement %s", app, m.ReferenceValues.SimulatedMeasurement)
	}
	sb, c := startAgentVM(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	agent := agentpb.NewAgentServiceClient(c)
	if _, err := agent.CreateSandbox(ctx, &agentpb.CreateSandboxRequest{SandboxId: "sb"}); err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	spec := agenttest.Spec("/run/cocoon-rootfs", "sh", "-c", "echo from the verified image; sleep 600")
	spec.Root.Readonly = true
	if _, err := agent.CreateContainer(ctx, &agentpb.CreateContainerRequest{ContainerId: "v1", ExecId: "v1", OCI: spec}); err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	if _, err := agent.StartContainer(ctx, &agentpb.StartContainerRequest{ContainerId: "v1"}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
	r, err := agent.ReadStdout(ctx, &agentpb.ReadStreamRequest{ContainerId: "v1", ExecId: "v1", Len: 1024})
	if err != nil || string(r.Data) != "from the verified image\n" {
		t.Fatalf("stdout %q, %v", r.GetData(), err)
	}

	// The host is the adversary: it rewrites a block of the image under
	// the running guest. The guest never read that file, so nothing is
	// cached, and the read must fail verification.
	data, err := os.ReadFile(image)
	if err != nil {
		t.Fatal(err)
	}
	at := bytes.Index(data, marker[:4096])
	if at < 0 {
		t.Fatal("marker not found in the image")
	}
	f, err := os.OpenFile(image, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{data[at+8192] ^ 0xff}, int64(at+8192)); err != nil {
		t.Fatal(err)
	}
	f.Close()

	spec2 := agenttest.Spec("/", "sh", "-c", "cat /big > /dev/null && echo read-ok || echo read-failed")
	if _, err := agent.ExecProcess(ctx, &agentpb.ExecProcessRequest{ContainerId: "v1", ExecId: "cat", Process: spec2.Process}); err != nil {
		t.Fatalf("ExecProcess: %v", err)
	}
	got := readAll(ctx, t, agent, "v1", "cat")
	if got != "read-failed\n" {
		t.Errorf("reading the tampered file: %q, want read-failed", got)
	}
	if _, err := agent.WaitProcess(ctx, &agentpb.WaitProcessRequest{ContainerId: "v1", ExecId: "cat"}); err != nil {
		t.Fatal(err)
	}
	console := readFile(sb.ConsoleLog())
	if !strings.Contains(console, "verity") || !strings.Contains(console, "corrupted") {
		t.Errorf("console lacks the kernel's dm-verity corruption report:\n%s", console)
	}
	// agent.debug_console: the initrd has no shell, the verity image has
	// busybox's.
	if !strings.Contains(console, "debug console: a root shell runs on the console") || !strings.Contains(console, "root=/run/cocoon-rootfs") {
		t.Errorf("console lacks the debug shell's start:\n%s", console)
	}
	if _, err := agent.DestroySandbox(ctx, &agentpb.DestroySandboxRequest{}); err != nil {
		t.Fatalf("DestroySandbox: %v", err)
	}
	if e := waitExit(t, sb); e.Reason != "shutdown (guest-shutdown)" {
		t.Errorf("exit %q", e.Reason)
	}
	assertGone(t, sb, state)
}

// layerPolicy allows containers only from verity layers whose root hash it
// lists, as a policy for integrity-protected layers does.
func layerPolicy(allowed string) string {
	return `package agent_policy

import rego.v1

default CreateSandboxRequest := true
default DestroySandboxRequest := true
default StartContainerRequest := true
default RemoveContainerRequest := true
default WaitProcessRequest := true
default ReadStreamRequest := true
default SetPolicyRequest := true
default ExecProcessRequest := true

default CreateContainerRequest := false

CreateContainerRequest if {
	count(input.storages) > 0
	every s in input.storages {
		concat("", ["io.katacontainers.fs-opt.root-hash=", "` + allowed + `"]) in s.options
	}
}
`
}

// TestVerityLayerInVM attaches two container images as dm-verity layers
// (erofs with the tree appended, one virtio disk each): the policy lists
// one root hash, so a container runs from that layer and the other layer
// is refused; a byte the host flips in the running layer fails to read.
func TestVerityLayerInVM(t *testing.T) {
	vmtest.RequireRoot(t)
	img := agentImage(t)
	dir := shortTempDir(t)
	var layers []*rootfs.LayerImage
	for i, marker := range []string{"layer-A", "layer-B"} {
		src := filepath.Join(dir, marker)
		if err := agenttest.MakeBusyboxRootfs(src); err != nil {
			t.Fatal(err)
		}
		big := bytes.Repeat([]byte(marker+"-data-"), 1<<14)
		if err := os.WriteFile(filepath.Join(src, "big"), big, 0o644); err != nil {
			t.Fatal(err)
		}
		l, err := rootfs.BuildLayerImage(context.Background(), src, filepath.Join(dir, fmt.Sprintf("layer%d.img", i)))
		if err != nil {
			t.Fatal(err)
		}
		layers = append(layers, l)
	}
	state := filepath.Join(shortTempDir(t), "state")
	sb, c := startAgentVM(t, hostvmm.Config{
		ID: "layer-vm", StateDir: state, Kernel: img.Kernel, Initrd: img.Initrd,
		Cmdline: "console=ttyS0 quiet panic=-1",
		Disks:   []hostvmm.Disk{{Path: layers[0].Path, ReadOnly: true}, {Path: layers[1].Path, ReadOnly: true}},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	agent := agentpb.NewAgentServiceClient(c)
	if _, err := agent.SetPolicy(ctx, &agentpb.SetPolicyRequest{Policy: layerPolicy(hex.EncodeToString(layers[0].RootHash))}); err != nil {
		t.Fatalf("SetPolicy: %v", err)
	}
	if _, err := agent.CreateSandbox(ctx, &agentpb.CreateSandboxRequest{SandboxId: "sb"}); err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	layerStorage := func(dev string, li *rootfs.LayerImage, mp string) *agentpb.Storage {
		return &agentpb.Storage{Driver: "mmioblk", Source: dev, Fstype: li.FSType, MountPoint: mp,
			Options: []string{"ro", "io.katacontainers.fs-opt.root-hash=" + hex.EncodeToString(li.RootHash),
				"io.cocoon.fs-opt.verity-data-blocks=" + strconv.FormatUint(li.DataBlocks, 10)}}
	}
	rootA := "/run/kata-containers/sandbox/layers/a"
	spec := agenttest.Spec(rootA, "sh", "-c", "head -c 7 /big; echo; sleep 600")
	spec.Root.Readonly = true
	if _, err := agent.CreateContainer(ctx, &agentpb.CreateContainerRequest{ContainerId: "a", ExecId: "a", OCI: spec,
		Storages: []*agentpb.Storage{layerStorage("/dev/vda", layers[0], rootA)}}); err != nil {
		t.Fatalf("CreateContainer from the allowed layer: %v", err)
	}
	if _, err := agent.StartContainer(ctx, &agentpb.StartContainerRequest{ContainerId: "a"}); err != nil {
		t.Fatal(err)
	}
	var line []byte
	for !bytes.Contains(line, []byte("\n")) {
		r, err := agent.ReadStdout(ctx, &agentpb.ReadStreamRequest{ContainerId: "a", ExecId: "a", Len: 64})
		if err != nil || len(r.Data) == 0 {
			t.Fatalf("stdout %q, %v", line, err)
		}
		line = append(line, r.Data...)
	}
	if string(line) != "layer-A\n" {
		t.Fatalf("stdout %q, want layer-A", line)
	}

	rootB := "/run/kata-containers/sandbox/layers/b"
	specB := agenttest.Spec(rootB, "true")
	_, err := agent.CreateContainer(ctx, &agentpb.CreateContainerRequest{ContainerId: "b", ExecId: "b", OCI: specB,
		Storages: []*agentpb.Storage{layerStorage("/dev/vdb", layers[1], rootB)}})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("CreateContainer from a layer the policy does not list: %v, want PermissionDenied", err)
	}
	// The right root hash with the other disk: dm-verity refuses it.
	wrong := layerStorage("/dev/vdb", layers[0], rootB)
	if _, err := agent.CreateContainer(ctx, &agentpb.CreateContainerRequest{ContainerId: "b2", ExecId: "b2", OCI: specB,
		Storages: []*agentpb.Storage{wrong}}); err == nil {
		t.Error("a disk whose content does not match the allowed root hash was mounted")
	}

	// Flip a byte of layer A's file that the guest has not read yet.
	data, err := os.ReadFile(layers[0].Path)
	if err != nil {
		t.Fatal(err)
	}
	at := bytes.Index(data, []byte("layer-A-data-layer-A-data-"))
	f, err := os.OpenFile(layers[0].Path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{data[at+65536] ^ 0xff}, int64(at+65536)); err != nil {
		t.Fatal(err)
	}
	f.Close()
	ex := agenttest.Spec("/", "sh", "-c", "cat /big > /dev/null && echo read-ok || echo read-failed")
	if _, err := agent.ExecProcess(ctx, &agentpb.ExecProcessRequest{ContainerId: "a", ExecId: "cat", Process: ex.Process}); err != nil {
		t.Fatal(err)
	}
	if got := readAll(ctx, t, agent, "a", "cat"); got != "read-failed\n" {
		t.Errorf("reading the tampered layer: %q, want read-failed", got)
	}
	if _, err := agent.RemoveContainer(ctx, &agentpb.RemoveContainerRequest{ContainerId: "a", Timeout: 0}); err != nil {
		// A running container: signal it first.
		agent.SignalProcess(ctx, &agentpb.SignalProcessRequest{ContainerId: "a", ExecId: "a", Signal: 9})
		agent.WaitProcess(ctx, &agentpb.WaitProcessRequest{ContainerId: "a", ExecId: "a"})
		if _, err := agent.RemoveContainer(ctx, &agentpb.RemoveContainerRequest{ContainerId: "a"}); err != nil {
			t.Fatalf("RemoveContainer: %v", err)
		}
	}
	if _, err := agent.DestroySandbox(ctx, &agentpb.DestroySandboxRequest{}); err != nil {
		t.Fatalf("DestroySandbox: %v", err)
	}
	if e := waitExit(t, sb); e.Reason != "shutdown (guest-shutdown)" {
		t.Errorf("exit %q", e.Reason)
	}
	assertGone(t, sb, state)
}
