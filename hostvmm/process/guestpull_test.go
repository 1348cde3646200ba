package process

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/ttrpc"

	"github.com/cocoon-containers/cocoon/agent/agenttest"
	"github.com/cocoon-containers/cocoon/hostvmm"
	"github.com/cocoon-containers/cocoon/hostvmm/vmtest"
	"github.com/cocoon-containers/cocoon/image/imagetest"
	"github.com/cocoon-containers/cocoon/rpc/agentpb"
)

var (
	agentBinOnce sync.Once
	agentBin     string
	agentBinErr  error
	agentBinDir  string
)

// realAgent builds cocoon-agent once per package run.
func realAgent(t *testing.T) string {
	t.Helper()
	agentBinOnce.Do(func() {
		dir, err := os.MkdirTemp("", "cocoon-process-agent-")
		if err != nil {
			agentBinErr = err
			return
		}
		agentBinDir = dir
		agentBin = filepath.Join(dir, "cocoon-agent")
		out, err := exec.Command("go", "build", "-o", agentBin, "github.com/cocoon-containers/cocoon/agent/cmd/cocoon-agent").CombinedOutput()
		if err != nil {
			agentBinErr = fmt.Errorf("build cocoon-agent: %v\n%s", err, out)
		}
	})
	if agentBinErr != nil {
		t.Fatal(agentBinErr)
	}
	return agentBin
}

// TestGuestPullRealAgent: the real agent under the process launcher pulls
// a container's image itself (an image_guest_pull storage, as the Kata
// runtime sends it) from a registry on loopback, and the container runs
// from it with whiteouts and hard links right. A tampered layer is refused
// and leaves no rootfs; removing the container removes the pulled rootfs.
func TestGuestPullRealAgent(t *testing.T) {
	vmtest.RequireRoot(t)
	reg := imagetest.NewRegistry(t)
	imagetest.Push(t, reg.Ref("apps/check:1"), imagetest.AppImage(t))
	bad := imagetest.Image(t, imagetest.BusyboxLayer(t), imagetest.Layer(t, imagetest.Entry{Name: "x", Body: "original"}))
	imagetest.Push(t, reg.Ref("apps/tampered:1"), bad)
	ls, err := bad.Layers()
	if err != nil {
		t.Fatal(err)
	}
	d, err := ls[1].Digest()
	if err != nil {
		t.Fatal(err)
	}
	reg.Tamper(d.String(), []byte("not the layer the manifest names"))

	dir := t.TempDir()
	cgroup := fmt.Sprintf("/cocoon-hostvmm-pull-%d", os.Getpid())
	t.Cleanup(func() { removeCgroup(t, cgroup) })
	conf := filepath.Join(dir, "agent.toml")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("cgroup_parent = %q\nlog_level = \"debug\"\n", cgroup)), 0o644); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(shortTempDir(t), "state")
	l := &Launcher{StopTimeout: time.Minute, Env: []string{"COCOON_AGENT_CONFIG=" + conf}}
	sb, err := l.Start(context.Background(), hostvmm.Config{ID: "pull-agent", StateDir: state, AgentBinary: realAgent(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sb.Cleanup() })
	agentLog := func() string { b, _ := os.ReadFile(sb.ConsoleLog()); return string(b) }

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := sb.DialAgent(ctx)
	if err != nil {
		t.Fatal(err)
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()
	agent := agentpb.NewAgentServiceClient(client)
	if _, err := agent.CreateSandbox(ctx, &agentpb.CreateSandboxRequest{Hostname: "pod", SandboxId: "sb1"}); err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}

	pullStorage := func(cid, image string) *agentpb.Storage {
		return &agentpb.Storage{Driver: "image_guest_pull", Source: image, Fstype: "overlay",
			DriverOptions: []string{`image_guest_pull={"metadata":{"io.kubernetes.cri.image-name":"` + image + `"}}`},
			MountPoint:    "/run/kata-containers/" + cid + "/rootfs"}
	}
	spec := agenttest.Spec("/run/kata-containers/c1/rootfs", "sh", "-c", imagetest.AppScript)
	if _, err := agent.CreateContainer(ctx, &agentpb.CreateContainerRequest{ContainerId: "c1", ExecId: "c1", OCI: spec,
		Storages: []*agentpb.Storage{pullStorage("c1", reg.Ref("apps/check:1"))}}); err != nil {
		t.Fatalf("CreateContainer: %v\nagent log:\n%s", err, agentLog())
	}
	if _, err := agent.StartContainer(ctx, &agentpb.StartContainerRequest{ContainerId: "c1"}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
	var out strings.Builder
	for {
		r, err := agent.ReadStdout(ctx, &agentpb.ReadStreamRequest{ContainerId: "c1", ExecId: "c1", Len: 64 << 10})
		if err != nil {
			t.Fatalf("ReadStdout: %v", err)
		}
		if len(r.Data) == 0 {
			break
		}
		out.Write(r.Data)
	}
	if w, err := agent.WaitProcess(ctx, &agentpb.WaitProcessRequest{ContainerId: "c1", ExecId: "c1"}); err != nil || w.Status != 0 {
		t.Fatalf("WaitProcess: %v %v", w, err)
	}
	if got := out.String(); got != imagetest.AppOutput {
		t.Errorf("container output %q, want %q", got, imagetest.AppOutput)
	}

	spec2 := agenttest.Spec("/run/kata-containers/c2/rootfs", "true")
	_, err = agent.CreateContainer(ctx, &agentpb.CreateContainerRequest{ContainerId: "c2", ExecId: "c2", OCI: spec2,
		Storages: []*agentpb.Storage{pullStorage("c2", reg.Ref("apps/tampered:1"))}})
	if err == nil || !strings.Contains(err.Error(), "digest") {
		t.Fatalf("tampered layer: %v, want a digest mismatch", err)
	}

	if _, err := agent.RemoveContainer(ctx, &agentpb.RemoveContainerRequest{ContainerId: "c1"}); err != nil {
		t.Fatalf("RemoveContainer: %v", err)
	}
	// The pull only goes into an empty directory: pulling to the same
	// rootfs again works only if removal emptied it. The layers come from
	// the cache this time.
	gets := reg.BlobGets.Load()
	if _, err := agent.CreateContainer(ctx, &agentpb.CreateContainerRequest{ContainerId: "c1", ExecId: "c1", OCI: spec,
		Storages: []*agentpb.Storage{pullStorage("c1", reg.Ref("apps/check:1"))}}); err != nil {
		t.Fatalf("CreateContainer again after removal: %v", err)
	}
	if n := reg.BlobGets.Load() - gets; n > 1 {
		t.Errorf("second pull fetched %d blobs; the layers should come from the cache", n)
	}
	if _, err := agent.RemoveContainer(ctx, &agentpb.RemoveContainerRequest{ContainerId: "c1"}); err != nil {
		t.Fatalf("RemoveContainer: %v", err)
	}
	client.Close()
	if err := sb.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if e, err := sb.Wait(ctx); err != nil || e.Reason != "exited with code 0" {
		t.Errorf("exit after stop: %v %v\n%s", e, err, agentLog())
	}
	for _, bad := range []string{"level=ERROR", "panic"} {
		if strings.Contains(agentLog(), bad) {
			t.Errorf("agent log shows %q:\n%s", bad, agentLog())
		}
	}
	if err := sb.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(state); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state dir after cleanup: %v", err)
	}
}
