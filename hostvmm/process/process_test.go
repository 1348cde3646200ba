package process

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"

	"github.com/cocoon-containers/cocoon/agent/agenttest"
	"github.com/cocoon-containers/cocoon/hostvmm"
	"github.com/cocoon-containers/cocoon/hostvmm/vmtest"
	"github.com/cocoon-containers/cocoon/image/imagetest"
	rootfspkg "github.com/cocoon-containers/cocoon/rootfs"
	"github.com/cocoon-containers/cocoon/rpc/agentpb"
)

var (
	buildOnce sync.Once
	helloInit string
	buildErr  error
	buildDir  string
)

func hello(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if buildDir, buildErr = os.MkdirTemp("", "cocoon-process-test-"); buildErr == nil {
			helloInit, buildErr = vmtest.BuildHelloInit(context.Background(), buildDir)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return helloInit
}

func TestMain(m *testing.M) {
	code := m.Run()
	for _, d := range []string{buildDir, agentBinDir} {
		if d != "" {
			os.RemoveAll(d)
		}
	}
	imagetest.RemoveBuilt()
	os.Exit(code)
}

func shortTempDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "hp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func start(t *testing.T, cfg hostvmm.Config) *sandbox {
	t.Helper()
	if cfg.StateDir == "" {
		cfg.StateDir = filepath.Join(shortTempDir(t), "state")
	}
	cfg.ID = "proc-test"
	cfg.AgentBinary = hello(t)
	l := &Launcher{Env: []string{"HELLO_TOKEN=p1"}, StopTimeout: time.Minute}
	sb, err := l.Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() { sb.Cleanup() })
	return sb.(*sandbox)
}

func version(t *testing.T, sb hostvmm.Sandbox, service string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := sb.DialAgent(ctx)
	if err != nil {
		b, _ := os.ReadFile(sb.ConsoleLog())
		t.Fatalf("dial agent: %v (console: %s)", err, b)
	}
	c := ttrpc.NewClient(conn)
	defer c.Close()
	h := agentpb.NewHealthClient(c)
	v, err := h.Version(ctx, &agentpb.CheckRequest{})
	if err != nil {
		t.Fatalf("Health.Version: %v", err)
	}
	if service != "" {
		if _, err := h.Check(ctx, &agentpb.CheckRequest{Service: service}); err != nil {
			t.Fatalf("Health.Check: %v", err)
		}
	}
	return v.AgentVersion
}

func nsLink(t *testing.T, pid, ns string) string {
	t.Helper()
	l, err := os.Readlink("/proc/" + pid + "/ns/" + ns)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// gone waits briefly for pid to disappear (the kernel tears down a PID
// namespace asynchronously after its init dies).
func gone(pid int) bool {
	for i := 0; i < 500; i++ {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

func TestProcessSandbox(t *testing.T) {
	vmtest.RequireRoot(t)
	share := t.TempDir()
	if err := os.WriteFile(filepath.Join(share, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(shortTempDir(t), "state")
	sb := start(t, hostvmm.Config{StateDir: state,
		SharedDirs: []hostvmm.SharedDir{{Tag: "ro", HostPath: share, ReadOnly: true}, {Tag: "rw", HostPath: share}}})
	if got, want := version(t, sb, ""), "hello-p1"; got != want {
		t.Fatalf("agent version = %q, want %q", got, want)
	}
	if got, want := sb.AgentAddr(), "unix://"+filepath.Join(state, "agent.sock"); got != want {
		t.Errorf("agent addr = %q, want %q", got, want)
	}
	pid := sb.AgentPid()
	if pid == 0 {
		t.Fatal("no agent pid")
	}
	p := strconv.Itoa(pid)
	for _, ns := range []string{"mnt", "pid", "uts", "ipc"} {
		if got, host := nsLink(t, p, ns), nsLink(t, "self", ns); got == host {
			t.Errorf("agent %s namespace = host's %s", ns, got)
		}
	}
	if got, host := nsLink(t, p, "net"), nsLink(t, "self", "net"); got != host {
		t.Errorf("agent net namespace %s, want the host's %s", got, host)
	}
	// PID 1 of the namespace is the launcher's shell; the agent is not.
	for _, tt := range []struct {
		pid  int
		what string
		one  bool
	}{{sb.initPid(), "init shell", true}, {pid, "agent", false}} {
		status, err := os.ReadFile("/proc/" + strconv.Itoa(tt.pid) + "/status")
		if err != nil {
			t.Fatal(err)
		}
		isOne := strings.Contains(string(status), "NSpid:\t"+strconv.Itoa(tt.pid)+"\t1\n")
		if isOne != tt.one {
			t.Errorf("%s is PID 1 of its namespace: %v, want %v\n%s", tt.what, isOne, tt.one, status)
		}
	}
	mi, err := os.ReadFile("/proc/" + p + "/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	mounts := map[string]string{} // mount point -> options and fs type
	for _, l := range strings.Split(string(mi), "\n") {
		f := strings.Fields(l)
		if len(f) > 5 {
			mounts[f[4]] = strings.Join(f[5:], " ")
		}
	}
	for _, tt := range []struct{ point, want string }{
		{"/run", "- tmpfs"},
		{HostStateDir, "rw"},
		{SharedRoot + "/ro", "ro"},
		{SharedRoot + "/rw", "rw"},
	} {
		got, ok := mounts[tt.point]
		if !ok || !strings.Contains(got, tt.want) {
			t.Errorf("mount %s in the agent's namespace = %q (present %v), want %q", tt.point, got, ok, tt.want)
		}
	}
	if _, ok := mounts["/run"]; ok {
		if _, err := os.Stat("/proc/" + p + "/root" + SharedRoot + "/rw/f"); err != nil {
			t.Errorf("shared file inside the namespace: %v", err)
		}
	}

	// What the host mounts into a shared directory after the start (a
	// pod's next container rootfs) appears in the agent's view.
	late := filepath.Join(share, "late")
	if err := os.Mkdir(late, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", late, "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(late, unix.MNT_DETACH)
	if err := os.WriteFile(filepath.Join(late, "next-rootfs"), []byte("y"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/proc/" + p + "/root" + SharedRoot + "/rw/late/next-rootfs"); err != nil {
		t.Errorf("a mount made in the shared directory after the start is not visible to the agent: %v", err)
	}

	// The agent exits by itself: reported, and cleanup leaves nothing.
	version(t, sb, "poweroff")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e, err := sb.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := e.Reason, "exited with code 0"; got != want {
		t.Errorf("exit = %q, want %q", got, want)
	}
	if !gone(pid) {
		t.Errorf("agent pid %d alive after exit", pid)
	}
	if err := sb.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(state); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state dir after cleanup: %v, want removed", err)
	}
	unix.Unmount(late, unix.MNT_DETACH)
	if mi, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mi), share) {
		t.Errorf("host mounts of the shared directory left after cleanup")
	}
}

func TestProcessStopAndKill(t *testing.T) {
	vmtest.RequireRoot(t)
	tests := []struct {
		name       string
		end        func(t *testing.T, sb *sandbox)
		wantReason string
	}{
		{"stop", func(t *testing.T, sb *sandbox) {
			for i := 0; i < 2; i++ {
				if err := sb.Stop(context.Background()); err != nil {
					t.Fatalf("stop #%d: %v", i+1, err)
				}
			}
		}, "exited with code 0"},
		{"kill -9 of the launcher's child", func(t *testing.T, sb *sandbox) {
			if err := syscall.Kill(sb.proc.Pid(), syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		}, "killed by signal 9"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			state := filepath.Join(shortTempDir(t), "state")
			sb := start(t, hostvmm.Config{StateDir: state})
			version(t, sb, "")
			pid := sb.AgentPid()
			tt.end(t, sb)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			e, err := sb.Wait(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if e.Reason != tt.wantReason {
				t.Errorf("exit = %q, want %q", e.Reason, tt.wantReason)
			}
			if !gone(pid) {
				t.Errorf("agent pid %d alive after the end", pid)
			}
			if _, err := sb.DialAgent(ctx); !errors.Is(err, errdefs.ErrUnavailable) {
				t.Errorf("dial after exit: %v, want unavailable", err)
			}
			if err := sb.Cleanup(); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(state); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("state dir after cleanup: %v, want removed", err)
			}
		})
	}
}

func TestProcessRefuses(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "agent")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cfg  hostvmm.Config
		want error
	}{
		{"snp", hostvmm.Config{ID: "a", StateDir: t.TempDir(), AgentBinary: bin, Confidential: hostvmm.ConfidentialSNP}, errdefs.ErrFailedPrecondition},
		{"no agent", hostvmm.Config{ID: "a", StateDir: t.TempDir(), AgentBinary: "/nonexistent"}, errdefs.ErrInvalidArgument},
		{"bad tag", hostvmm.Config{ID: "a", StateDir: t.TempDir(), AgentBinary: bin,
			SharedDirs: []hostvmm.SharedDir{{Tag: "../x", HostPath: t.TempDir()}}}, errdefs.ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sb, err := (&Launcher{}).Start(context.Background(), tt.cfg)
			if err == nil {
				sb.Cleanup()
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("Start error = %v, want %v", err, tt.want)
			}
		})
	}
}

// TestRealAgent runs the cocoon-agent under the process launcher: it
// serves the agent API on the launcher's socket without taking itself for
// a VM's init, runs a busybox container whose output and exit code come
// back, and ends cleanly on Stop.
func TestRealAgent(t *testing.T) {
	vmtest.RequireRoot(t)
	dir := t.TempDir()
	bin := realAgent(t)
	cgroup := fmt.Sprintf("/cocoon-hostvmm-test-%d", os.Getpid())
	t.Cleanup(func() { removeCgroup(t, cgroup) })
	conf := filepath.Join(dir, "agent.toml")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("cgroup_parent = %q\n", cgroup)), 0o644); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(shortTempDir(t), "state")
	l := &Launcher{StopTimeout: time.Minute, Env: []string{"COCOON_AGENT_CONFIG=" + conf}}
	sb, err := l.Start(context.Background(), hostvmm.Config{ID: "real-agent", StateDir: state, AgentBinary: bin})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sb.Cleanup() })
	if v := version(t, sb, ""); v == "" {
		t.Error("agent version is empty")
	}
	if b, err := os.ReadFile(filepath.Join(state, "default-policy.rego")); err != nil || !bytes.Equal(b, rootfspkg.AllowAllPolicy()) {
		t.Errorf("default policy in the state dir: %v; want the allow-all policy", err)
	}

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
	rootfs := agenttest.BusyboxRootfs(t, dir, "c1")
	spec := agenttest.Spec(rootfs, "sh", "-c", "echo hello from $(hostname); exit 3")
	if _, err := agent.CreateContainer(ctx, &agentpb.CreateContainerRequest{ContainerId: "c1", ExecId: "c1", OCI: spec}); err != nil {
		b, _ := os.ReadFile(sb.ConsoleLog())
		t.Fatalf("CreateContainer: %v\nagent log:\n%s", err, b)
	}
	if _, err := agent.StartContainer(ctx, &agentpb.StartContainerRequest{ContainerId: "c1"}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
	out := readStdout(ctx, t, agent, "c1")
	w, err := agent.WaitProcess(ctx, &agentpb.WaitProcessRequest{ContainerId: "c1", ExecId: "c1"})
	if err != nil {
		t.Fatalf("WaitProcess: %v", err)
	}
	if got, want := out, "hello from cocoon-test\n"; got != want {
		t.Errorf("container output = %q, want %q", got, want)
	}
	if got, want := w.Status, int32(3); got != want {
		t.Errorf("container exit status = %d, want %d", got, want)
	}
	if _, err := agent.RemoveContainer(ctx, &agentpb.RemoveContainerRequest{ContainerId: "c1"}); err != nil {
		t.Fatalf("RemoveContainer: %v", err)
	}
	client.Close()

	if err := sb.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	e, err := sb.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := e.Reason, "exited with code 0"; got != want {
		b, _ := os.ReadFile(sb.ConsoleLog())
		t.Errorf("exit after stop = %q, want %q; agent log:\n%s", got, want, b)
	}
	if err := sb.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(state); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state dir after cleanup: %v, want removed", err)
	}
}

// readStdout reads container cid's stdout until EOF.
func readStdout(ctx context.Context, t *testing.T, agent agentpb.AgentServiceService, cid string) string {
	t.Helper()
	var out strings.Builder
	for {
		r, err := agent.ReadStdout(ctx, &agentpb.ReadStreamRequest{ContainerId: cid, ExecId: cid, Len: 64 << 10})
		if err != nil {
			t.Fatalf("ReadStdout: %v", err)
		}
		if len(r.Data) == 0 {
			return out.String()
		}
		out.Write(r.Data)
	}
}

// removeCgroup removes the agent's cgroup parent in every hierarchy, and
// fails the test when a container cgroup is left in it.
func removeCgroup(t *testing.T, parent string) {
	dirs := []string{filepath.Join("/sys/fs/cgroup", parent)}
	if ents, err := os.ReadDir("/sys/fs/cgroup"); err == nil {
		for _, e := range ents {
			dirs = append(dirs, filepath.Join("/sys/fs/cgroup", e.Name(), parent))
		}
	}
	for _, d := range dirs {
		ents, err := os.ReadDir(d)
		if err != nil {
			continue
		}
		for _, e := range ents {
			if e.IsDir() {
				t.Errorf("container cgroup left behind: %s", filepath.Join(d, e.Name()))
			}
		}
		if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Errorf("remove cgroup %s: %v", d, err)
		}
	}
}

func TestCmdlineEnv(t *testing.T) {
	got := cmdlineEnv("console=ttyS0 cocoon.kbs_url=http://127.0.0.1:8080 cocoon.log=debug agent.log=warn " +
		"cocoon.sim_host_data=00 cocoon.server_addr=unix:///x cocoon.default_policy=/p cocoon.flag cocoon.=x")
	want := []string{"COCOON_KBS_URL=http://127.0.0.1:8080", "COCOON_LOG=debug"}
	if !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}
