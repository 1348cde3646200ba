package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cocoon-containers/cocoon/hostvmm/vmtest"
	"github.com/cocoon-containers/cocoon/shim/sandbox"
)

// TestConfidentialPod is the main job as assertions: a confidential pod
// whose policy HOST_DATA binds gets its secret; exec is refused by its
// policy; a pod launched with a modified policy gets no secret and its
// workload sees why; with the KBS down the workload gets 503; nothing
// leaks into any log and nothing is left behind.
func TestConfidentialPod(t *testing.T) {
	vmtest.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", "cocoon-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	agent, err := vmtest.BuildAgent(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	env, err := Prepare(ctx, Options{AgentBinary: agent, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer env.Close()

	good, err := env.StartPod(ctx, "pod-good", Policy)
	if err != nil {
		t.Fatal(err)
	}
	defer good.Close()
	if good.PolicyErr != nil {
		t.Fatalf("SetPolicy of the policy HOST_DATA binds: %v\n%s", good.PolicyErr, good.ConsoleLog())
	}
	out, code, err := good.RunWorkload(ctx)
	if err != nil {
		t.Fatalf("workload: %v\n%s", err, good.ConsoleLog())
	}
	if out != Secret || code != 0 {
		t.Errorf("workload printed %q (exit %d), want the secret %q\nKBS log:\n%s\nconsole:\n%s", out, code, Secret, env.KBSLogs, good.ConsoleLog())
	}
	err = good.Exec(ctx)
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "ExecProcessRequest is blocked by policy") {
		t.Errorf("exec: %v, want PermissionDenied by policy", err)
	}

	modified := Policy + "\n# one more line: another policy, another HOST_DATA\n"
	bad, err := env.StartPod(ctx, "pod-modified", modified)
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	if bad.PolicyErr != nil {
		t.Fatalf("SetPolicy of the modified policy, which its own HOST_DATA binds: %v", bad.PolicyErr)
	}
	out, _, err = bad.RunWorkload(ctx)
	if err != nil {
		t.Fatalf("workload of the modified pod: %v", err)
	}
	if strings.Contains(out, Secret) || !strings.Contains(out, "403") {
		t.Errorf("modified pod's workload printed %q, want a 403 and no secret", out)
	}

	env.StopKBS()
	out, _, err = good.RunWorkload(ctx)
	if err != nil {
		t.Fatalf("workload with the KBS down: %v", err)
	}
	if strings.Contains(out, Secret) || !strings.Contains(out, "503") {
		t.Errorf("workload with the KBS down printed %q, want a 503", out)
	}

	for _, p := range []*Pod{good, bad} {
		e, err := p.Stop(ctx)
		if err != nil || e.Reason != "shutdown (guest-shutdown)" {
			t.Errorf("pod stop: %+v, %v", e, err)
		}
		console := p.ConsoleLog()
		if strings.Contains(console, Secret) {
			t.Errorf("the guest console shows the secret:\n%s", console)
		}
		if err := p.Close(); err != nil {
			t.Error(err)
		}
	}
	if strings.Contains(env.KBSLogs.String(), Secret) {
		t.Error("the KBS log shows the secret")
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "pods", "*")); len(left) != 0 {
		t.Errorf("pod state left behind: %v", left)
	}
	if procs := processesNamed(dir); len(procs) != 0 {
		t.Errorf("processes left behind: %v", procs)
	}
}

// processesNamed lists the command lines that mention name.
func processesNamed(name string) []string {
	var out []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !strings.Contains(string(b), name) {
			continue
		}
		out = append(out, strings.ReplaceAll(string(b), "\x00", " "))
	}
	return out
}

// TestConfidentialPodContainerd is the main job through containerd and
// the shim: ctr runs a confidential pod under QEMU (simulated SNP) whose
// image reaches the guest as a dm-verity layer the policy names; the
// workload gets its secret; exec is refused; a modified policy gets 403.
func TestConfidentialPodContainerd(t *testing.T) {
	vmtest.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", "cocoon-e2e-ctrd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cl, err := StartCluster(ctx, dir, "")
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()

	out, err := cl.RunWorkload(ctx, "good", cl.Policy)
	if err != nil {
		t.Fatalf("workload: %v\n%s", err, cl.Containerd.LogTail())
	}
	if out != Secret {
		t.Errorf("workload printed %q, want the secret\nKBS log:\n%s", out, cl.KBSLogs)
	}
	// The image's two layers arrive as two verity layers: the top one's
	// file is there and its whiteout hides the bottom one's file.
	out, err = cl.Run(ctx, "layers", cl.Policy, "sh", "-c", "cat /etc/os-release; [ -e /etc/motd ] || echo motd-gone")
	if err != nil || out != "ID=cocoon-test\nmotd-gone\n" {
		t.Errorf("layered rootfs: %q, %v", out, err)
	}
	// The same layers named in the other order do not satisfy the policy.
	swapped := PodPolicyFor([]string{cl.LayerHashes[1], cl.LayerHashes[0]})
	if _, err := cl.Run(ctx, "swapped", swapped, "true"); err == nil || !strings.Contains(err.Error(), "CreateContainerRequest is blocked by policy") {
		t.Errorf("layers in the wrong order: %v, want the policy's refusal", err)
	}
	if err := cl.StartIdle(ctx, "idle", cl.Policy); err != nil {
		t.Fatal(err)
	}
	err = cl.Exec(ctx, "idle")
	if err == nil || !strings.Contains(err.Error(), "ExecProcessRequest is blocked by policy") {
		t.Errorf("exec: %v, want the policy's refusal", err)
	}
	cl.Remove(ctx, "idle")

	out, err = cl.RunWorkload(ctx, "modified", cl.Policy+"\n# modified\n")
	if err != nil {
		t.Fatalf("modified workload: %v", err)
	}
	if strings.Contains(out, Secret) || !strings.Contains(out, "403") {
		t.Errorf("modified pod printed %q, want a 403", out)
	}
	cl.StopKBS()
	out, err = cl.RunWorkload(ctx, "kbs-down", cl.Policy)
	if err != nil {
		t.Fatalf("workload with the KBS down: %v", err)
	}
	if strings.Contains(out, Secret) || !strings.Contains(out, "503") {
		t.Errorf("workload with the KBS down printed %q, want a 503", out)
	}
	if strings.Contains(cl.KBSLogs.String(), Secret) {
		t.Error("the KBS log shows the secret")
	}
	if left := processesNamed(cl.SandboxesDir()); len(left) != 0 {
		t.Errorf("processes left: %v", left)
	}
	if mi, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mi), cl.SandboxesDir()) {
		t.Error("mounts left under the sandboxes' state")
	}
	ents, _ := os.ReadDir(cl.SandboxesDir())
	for _, e := range ents {
		if e.Name() != sandbox.LayerCacheDir {
			t.Errorf("sandbox state left: %s", e.Name())
		}
	}
	// Every pod ran the same two-layer image: the layer cache built each
	// layer's verity image once.
	if imgs, _ := filepath.Glob(filepath.Join(cl.SandboxesDir(), sandbox.LayerCacheDir, "*.img")); len(imgs) != 2 {
		t.Errorf("layer cache holds %d images after pods of one two-layer image, want 2", len(imgs))
	}
}
