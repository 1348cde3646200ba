package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-containers/cocoon/image/imagetest"
	"github.com/cocoon-containers/cocoon/shim/shimtest"
)

// crictlPath is the pinned crictl that make go-deps installs.
func crictlPath(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"../../../.tools/bin/crictl", "crictl"} {
		if abs, err := exec.LookPath(p); err == nil {
			return abs
		}
	}
	t.Fatal("crictl is not installed: make go-deps installs it into .tools/bin")
	return ""
}

// TestCRI runs a pod through containerd's CRI plugin with crictl and the
// runtime handler cocoon: runp, create, start, logs, exec, stop, rm. A
// second pod, with the handler cocoon-guest-pull, keeps the pause
// container on the host path and has the agent pull the app container's
// image, which CRI names in the container's annotations. A third, with the
// handler cocoon-confidential, does the same in a confidential VM.
func TestCRI(t *testing.T) {
	shimtest.RequireRoot(t)
	if cd == nil {
		t.Fatal("containerd harness did not start")
	}
	crictl := crictlPath(t)
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "cocoon-cri-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	for _, d := range []string{"cni-bin", "cni-conf", "logs"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	reg := imagetest.NewRegistry(t)
	ref := reg.Ref("apps/check:1")
	imagetest.Push(t, ref, imagetest.AppImage(t))
	c := &shimtest.Containerd{Dir: filepath.Join(dir, "containerd"), BinDir: cd.BinDir, CRI: true, ExtraConfig: fmt.Sprintf(`
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %q
    conf_dir = %q
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "cocoon"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.cocoon]
    runtime_type = "io.containerd.cocoon.v2"
    pod_annotations = ["io.katacontainers.*"]
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.cocoon.options]
      ConfigPath = %q
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.cocoon-guest-pull]
    runtime_type = "io.containerd.cocoon.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.cocoon-guest-pull.options]
      ConfigPath = %q
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.cocoon-confidential]
    runtime_type = "io.containerd.cocoon.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.cocoon-confidential.options]
      ConfigPath = %q
`, shimtest.PauseImageName, filepath.Join(dir, "cni-bin"), filepath.Join(dir, "cni-conf"), configPath, guestPullConfig(t, dir),
		confidentialConfig(t, dir, reg.Host))}
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	defer shimtest.UnmountUnder(dir)
	tarball := filepath.Join(dir, "images.tar")
	if err := shimtest.WriteBusyboxImage(tarball); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.CommandContext(ctx, "ctr", "--address", c.Address, "--namespace", "k8s.io", "images", "import", tarball).CombinedOutput(); err != nil {
		t.Fatalf("import into k8s.io: %v: %s", err, out)
	}
	run := func(args ...string) string {
		t.Helper()
		full := append([]string{"--runtime-endpoint", "unix://" + c.Address, "--image-endpoint", "unix://" + c.Address, "--timeout", "120s"}, args...)
		cmd := exec.CommandContext(ctx, crictl, full...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			out = append(out, stderr.String()...)
			t.Fatalf("crictl %s: %v\n%s\ncontainerd log:\n%s", strings.Join(args, " "), err, out, grepLog(c.LogPath(), "cri", "error", "fail", "warn"))
		}
		return strings.TrimSpace(string(out))
	}
	write := func(name string, v any) string {
		b, _ := json.Marshal(v)
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pod := write("pod.json", map[string]any{
		"metadata":      map[string]any{"name": "cocoon-pod", "namespace": "default", "uid": "cocoon-pod-uid", "attempt": 0},
		"log_directory": filepath.Join(dir, "logs"),
		"linux": map[string]any{"security_context": map[string]any{
			"namespace_options": map[string]any{"network": 2}, // NODE: host network, no CNI
		}},
	})
	ctr := write("ctr.json", map[string]any{
		"metadata": map[string]any{"name": "app"},
		"image":    map[string]any{"image": shimtest.BusyboxImageName},
		"command":  []string{"sh", "-c", "echo hello from a cocoon pod; exec sleep 1000"},
		"log_path": "app.log",
	})
	podID := run("runp", "--runtime", "cocoon", pod)
	defer func() {
		exec.Command(crictl, "--runtime-endpoint", "unix://"+c.Address, "stopp", podID).Run()
		exec.Command(crictl, "--runtime-endpoint", "unix://"+c.Address, "rmp", podID).Run()
	}()
	ctrID := run("create", podID, ctr, pod)
	run("start", ctrID)
	// Polled until the line is there; go test -timeout bounds the wait.
	for !strings.Contains(run("logs", ctrID), "hello from a cocoon pod") {
		time.Sleep(100 * time.Millisecond)
	}
	if out := run("exec", ctrID, "sh", "-c", "echo exec in the pod"); out != "exec in the pod" {
		t.Errorf("exec: %q", out)
	}
	// The pod sandbox and its container share one shim.
	runtimeDir := filepath.Join(c.StateDir(), "io.containerd.runtime.v2.task", "k8s.io")
	a1, err1 := os.ReadFile(filepath.Join(runtimeDir, podID, "address"))
	a2, err2 := os.ReadFile(filepath.Join(runtimeDir, ctrID, "address"))
	if err1 != nil || err2 != nil || string(a1) != string(a2) {
		t.Errorf("shim addresses %q (%v) and %q (%v): want one shim for the pod", a1, err1, a2, err2)
	}
	run("stop", ctrID)
	run("rm", ctrID)
	run("stopp", podID)
	run("rmp", podID)
	if out := run("pods", "-q"); out != "" {
		t.Errorf("pods left: %q", out)
	}
	if left := processesUnder(filepath.Join(sandboxesDir, podID[:16])); len(left) != 0 {
		t.Errorf("processes left: %v", left)
	}

	if out, err := exec.CommandContext(ctx, "ctr", "--address", c.Address, "--namespace", "k8s.io", "images", "pull", "--plain-http", ref).CombinedOutput(); err != nil {
		t.Fatalf("host pull into k8s.io: %v: %s", err, out)
	}
	gctr := write("guest-ctr.json", map[string]any{
		"metadata": map[string]any{"name": "pulled"},
		"image":    map[string]any{"image": ref},
		"command":  []string{"sh", "-c", imagetest.AppScript + "; exec sleep 1000"},
		"log_path": "pulled.log",
	})
	gpod := write("guest-pod.json", map[string]any{
		"metadata":      map[string]any{"name": "guest-pull-pod", "namespace": "default", "uid": "guest-pull-uid", "attempt": 0},
		"log_directory": filepath.Join(dir, "logs"),
		"linux": map[string]any{"security_context": map[string]any{
			"namespace_options": map[string]any{"network": 2},
		}},
	})
	// pulledPod runs gctr in a pod of handler, checks its output and that
	// the guest pulled the image, and removes the pod.
	pulledPod := func(handler string) {
		t.Helper()
		gets := reg.BlobGets.Load()
		podID := run("runp", "--runtime", handler, gpod)
		defer func() {
			exec.Command(crictl, "--runtime-endpoint", "unix://"+c.Address, "stopp", podID).Run()
			exec.Command(crictl, "--runtime-endpoint", "unix://"+c.Address, "rmp", podID).Run()
		}()
		ctrID := run("create", podID, gctr, gpod)
		run("start", ctrID)
		for !strings.Contains(run("logs", ctrID), "hardlink-ok") {
			time.Sleep(100 * time.Millisecond)
		}
		if got := run("logs", ctrID); got+"\n" != imagetest.AppOutput {
			t.Errorf("%s: guest-pulled container logs %q, want %q", handler, got, imagetest.AppOutput)
		}
		if n := reg.BlobGets.Load() - gets; n < 3 {
			t.Errorf("%s: %d blobs fetched for the pod: the guest did not pull the image", handler, n)
		}
		run("stop", ctrID)
		run("rm", ctrID)
		run("stopp", podID)
		run("rmp", podID)
	}
	pulledPod("cocoon-guest-pull")
	// A confidential pod under QEMU (simulated SNP, nothing shared): the
	// pause container arrives as verity layers, the app container, which
	// the sandbox did not start with, is pulled by the guest.
	pulledPod("cocoon-confidential")
	if out := run("pods", "-q"); out != "" {
		t.Errorf("pods left: %q", out)
	}
}

// confidentialConfig runs pods under QEMU TCG with simulated SNP, pulling
// images in the guest from the registry at registry.
func confidentialConfig(t *testing.T, dir, registry string) string {
	img := qemuImage(t)
	p := filepath.Join(dir, "confidential.toml")
	body := fmt.Sprintf("[sandbox]\nlauncher = \"qemu\"\nkernel = %q\ninitrd = %q\nconfidential = \"simulated\"\nmemory_mib = 512\n"+
		"kernel_params = \"console=ttyS0 quiet panic=-1\"\nstate_dir = %q\nimage_pull = \"guest\"\nimage_registries = [%q]\n",
		img.Kernel, img.Initrd, filepath.Join(dir, "qemu-sandboxes"), registry)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// guestPullConfig is the harness's process-launcher configuration with
// image_pull = "guest".
func guestPullConfig(t *testing.T, dir string) string {
	base, err := os.ReadFile(configPath)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "guest-pull.toml")
	if err := os.WriteFile(p, append(base, []byte("image_pull = \"guest\"\n")...), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// grepLog returns the log lines holding any of words (at most 60).
func grepLog(path string, words ...string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		for _, w := range words {
			if strings.Contains(strings.ToLower(l), w) {
				out = append(out, l)
				break
			}
		}
	}
	if len(out) > 60 {
		out = out[len(out)-60:]
	}
	return strings.Join(out, "\n")
}
