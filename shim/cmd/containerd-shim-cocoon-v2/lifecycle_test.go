package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-containers/cocoon/hostvmm/vmtest"
	"github.com/cocoon-containers/cocoon/image/imagetest"
	"github.com/cocoon-containers/cocoon/rootfs"
	"github.com/cocoon-containers/cocoon/shim/shimtest"
)

// denyExec is a pod policy: everything but ExecProcess.
var denyExec = strings.Replace(string(rootfs.AllowAllPolicy()), "default ExecProcessRequest := true", "default ExecProcessRequest := false", 1)

// TestPolicyDeniesExec: a pod annotated with a policy that denies
// ExecProcess runs, and `ctr task exec` fails with the policy's error.
func TestPolicyDeniesExec(t *testing.T) {
	c := requireContainerd(t)
	ctx := context.Background()
	if !strings.Contains(denyExec, "ExecProcessRequest := false") {
		t.Fatal("the deny-exec policy was not derived from allow-all")
	}
	ann := "io.katacontainers.config.agent.policy=" + base64.StdEncoding.EncodeToString([]byte(denyExec))
	if _, _, err := ctrRun(ctx, c, nil, []string{"-d", "--annotation", ann}, "policed", "sleep", "1000"); err != nil {
		t.Fatalf("%v\n%s", err, c.LogTail())
	}
	defer removeTask(ctx, c, "policed")
	_, _, err := c.Ctr(ctx, "tasks", "exec", "--exec-id", "sh", "policed", "sh", "-c", "echo should not run")
	if err == nil || !strings.Contains(err.Error(), "ExecProcessRequest is blocked by policy") {
		t.Errorf("exec into a pod whose policy denies it: %v", err)
	}
}

func removeTask(ctx context.Context, c *shimtest.Containerd, id string) {
	c.Ctr(ctx, "tasks", "kill", "-s", "SIGKILL", id)
	c.Ctr(ctx, "tasks", "delete", "--force", id)
	c.Ctr(ctx, "containers", "delete", id)
}

// shimPid finds the shim serving container id.
func shimPid(t *testing.T, id string) int {
	t.Helper()
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) > 0 && strings.HasSuffix(args[0], "containerd-shim-cocoon-v2") && strings.Contains(string(b), "\x00-id\x00"+id+"\x00") {
			return pid
		}
	}
	t.Fatalf("no shim process for %s", id)
	return 0
}

// processesUnder lists processes whose command line mentions dir.
func processesUnder(dir string) []string {
	var out []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), dir) {
			out = append(out, e.Name()+": "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return out
}

// TestDeleteAfterCrashedShim: kill -9 of a pod's shim; containerd runs
// `shim delete`, which stops the sandbox and removes its state.
func TestDeleteAfterCrashedShim(t *testing.T) {
	c := requireContainerd(t)
	ctx := context.Background()
	if _, _, err := ctrRun(ctx, c, nil, []string{"-d"}, "crash", "sleep", "1000"); err != nil {
		t.Fatalf("%v\n%s", err, c.LogTail())
	}
	defer removeTask(ctx, c, "crash")
	state := filepath.Join(sandboxesDir, "crash")
	if _, err := os.Stat(state); err != nil {
		t.Fatalf("sandbox state %s: %v", state, err)
	}
	if err := syscall.Kill(shimPid(t, "crash"), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Polled until containerd's cleanup is done; go test -timeout bounds
	// the wait. Each round logs what is still there once in a while, so a
	// hang says what it waits for.
	for i := 0; ; i++ {
		_, statErr := os.Stat(state)
		left := processesUnder(state)
		if errors.Is(statErr, os.ErrNotExist) && len(left) == 0 {
			break
		}
		if i > 0 && i%100 == 0 {
			t.Logf("after the shim's death: state %s: %v; processes %v", state, statErr, left)
		}
		time.Sleep(100 * time.Millisecond)
	}
	out, _, _ := c.Ctr(ctx, "tasks", "ls")
	if strings.Contains(out, "crash ") {
		t.Errorf("containerd still lists the task: %s", out)
	}
}

// TestContainerdRestart: containerd restarts while a pod runs and finds
// the pod's shim again through its address.
func TestContainerdRestart(t *testing.T) {
	c := requireContainerd(t)
	ctx := context.Background()
	if _, _, err := ctrRun(ctx, c, nil, []string{"-d"}, "survivor", "sleep", "1000"); err != nil {
		t.Fatalf("%v\n%s", err, c.LogTail())
	}
	defer removeTask(ctx, c, "survivor")
	if err := c.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	out, _, err := c.Ctr(ctx, "tasks", "ls")
	if err != nil || !strings.Contains(out, "survivor") || !strings.Contains(out, "RUNNING") {
		t.Fatalf("after the restart: %q, %v", out, err)
	}
	out, _, err = c.Ctr(ctx, "tasks", "exec", "--exec-id", "after", "survivor", "echo", "still here")
	if err != nil || out != "still here\n" {
		t.Errorf("exec after the restart: %q, %v", out, err)
	}
}

// qemuImage builds the standard guest image once per package run.
func qemuImage(t *testing.T) *vmtest.Image { return vmtest.SharedAgentImage(t) }

// TestQEMU runs a container under QEMU TCG with the standard guest image:
// the shim boots the VM, shares the rootfs over 9p and drives the agent.
func TestQEMU(t *testing.T) {
	c := requireContainerd(t)
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "cocoon-shim-qemu-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	img := qemuImage(t)
	cfg := filepath.Join(dir, "qemu.toml")
	body := fmt.Sprintf("[sandbox]\nlauncher = \"qemu\"\nkernel = %q\ninitrd = %q\nshared_fs = \"9p\"\nmemory_mib = 512\nkernel_params = \"console=ttyS0 quiet panic=-1\"\nstate_dir = %q\n",
		img.Kernel, img.Initrd, filepath.Join(dir, "sandboxes"))
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	out, _, err := c.Ctr(ctx, "run", "--runtime", runtimeName, "--runtime-config-path", cfg, "--rm",
		shimtest.BusyboxImageName, "in-vm", "sh", "-c", "echo hello from the guest; cat /proc/1/cgroup | head -1; exit 5")
	if err == nil || !strings.Contains(err.Error(), "exit status 5") {
		t.Errorf("exit: %v, want status 5\n%s", err, c.LogTail())
	}
	if !strings.HasPrefix(out, "hello from the guest\n0::/") {
		t.Errorf("output %q", out)
	}
	if left := processesUnder(filepath.Join(dir, "sandboxes")); len(left) != 0 {
		t.Errorf("processes left: %v", left)
	}
}

// TestGuestPull: with image_pull = "guest", the agent pulls the image the
// container's CRI image-name annotation names from the registry itself
// (here the process launcher's agent reaches a loopback registry), the
// container runs from that pull, and the pod policy sees the guest-pull
// storage: a policy that pins another image refuses the container.
func TestGuestPull(t *testing.T) {
	c := requireContainerd(t)
	ctx := context.Background()
	reg, ref := appImageInContainerd(t, c)
	cfg := guestPullConfig(t, t.TempDir())
	run := func(id string, extra ...string) (string, error) {
		args := append([]string{"run", "--rm", "--runtime", runtimeName, "--runtime-config-path", cfg,
			"--annotation", "io.kubernetes.cri.image-name=" + ref}, extra...)
		out, _, err := c.Ctr(ctx, append(args, ref, id, "sh", "-c", imagetest.AppScript)...)
		return out, err
	}
	before := reg.BlobGets.Load()
	out, err := run("gp1")
	if err != nil {
		t.Fatalf("guest-pulled container: %v\n%s", err, c.LogTail())
	}
	if out != imagetest.AppOutput {
		t.Errorf("output %q, want %q", out, imagetest.AppOutput)
	}
	if n := reg.BlobGets.Load() - before; n < 3 {
		t.Errorf("%d blobs fetched while the container started: the guest did not pull the image's three layers", n)
	}

	pinOther := strings.Replace(string(rootfs.AllowAllPolicy()), "default CreateContainerRequest := true", "default CreateContainerRequest := false", 1) + `
CreateContainerRequest {
	s := input.storages[_]
	s.driver == "image_guest_pull"
	s.source == "registry.example/apps/check@sha256:` + strings.Repeat("0", 64) + `"
}
`
	_, err = run("gp2", "--annotation", "io.katacontainers.config.agent.policy="+base64.StdEncoding.EncodeToString([]byte(pinOther)))
	if err == nil || !strings.Contains(err.Error(), "CreateContainerRequest is blocked by policy") {
		t.Errorf("policy pinning another image: %v", err)
	}
	if left := processesUnder(sandboxesDir); len(left) != 0 {
		t.Errorf("processes left: %v", left)
	}
}

// TestQEMUGuestPull: a confidential sandbox under QEMU (simulated SNP, no
// shared directory) whose container image the agent pulls itself: the
// guest network forwards only the registry on the host's loopback, the
// image keeps its name, and the container runs from the guest's pull.
func TestQEMUGuestPull(t *testing.T) {
	c := requireContainerd(t)
	ctx := context.Background()
	reg, ref := appImageInContainerd(t, c)
	dir, err := os.MkdirTemp("", "cocoon-shim-qemu-pull-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	cfg := confidentialConfig(t, dir, reg.Host)
	gets := reg.BlobGets.Load()
	out, _, err := c.Ctr(ctx, "run", "--runtime", runtimeName, "--runtime-config-path", cfg, "--rm",
		"--annotation", "io.kubernetes.cri.image-name="+ref, ref, "qemu-pull", "sh", "-c", imagetest.AppScript)
	if err != nil {
		t.Fatalf("guest-pulled container under QEMU: %v\n%s", err, c.LogTail())
	}
	if out != imagetest.AppOutput {
		t.Errorf("output %q, want %q", out, imagetest.AppOutput)
	}
	if n := reg.BlobGets.Load() - gets; n < 3 {
		t.Errorf("%d blobs fetched: the guest did not pull the image", n)
	}
	if left := processesUnder(filepath.Join(dir, "qemu-sandboxes")); len(left) != 0 {
		t.Errorf("processes left: %v", left)
	}
}

// appImageInContainerd serves imagetest.AppImage from a loopback registry
// and has containerd pull it too (it creates containers only from images
// it has); it returns the registry and the image's name.
func appImageInContainerd(t *testing.T, c *shimtest.Containerd) (*imagetest.Registry, string) {
	t.Helper()
	reg := imagetest.NewRegistry(t)
	ref := reg.Ref("apps/check:1")
	imagetest.Push(t, ref, imagetest.AppImage(t))
	if _, _, err := c.Ctr(context.Background(), "images", "pull", "--plain-http", ref); err != nil {
		t.Fatalf("host pull: %v", err)
	}
	t.Cleanup(func() { c.Ctr(context.Background(), "images", "rm", ref) })
	return reg, ref
}
