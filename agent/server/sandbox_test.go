package server_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cocoon-containers/cocoon/agent/agenttest"
	"github.com/cocoon-containers/cocoon/agent/server"
	"github.com/cocoon-containers/cocoon/rpc/agentpb"
)

// fakeStorage records mount requests; it mounts nothing.
type fakeStorage struct {
	mu     sync.Mutex
	events []string
}

func (f *fakeStorage) MountStorages(ctx context.Context, owner string, st []*agentpb.Storage) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var points []string
	for _, s := range st {
		f.events = append(f.events, "mount "+owner+" "+s.MountPoint)
		points = append(points, s.MountPoint)
	}
	return points, nil
}

func (f *fakeStorage) UnmountOwner(ctx context.Context, owner string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.events = append(f.events, "unmount "+owner)
	return nil
}

func (f *fakeStorage) log() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.events)
}

func TestDestroySandbox(t *testing.T) {
	agenttest.RequireRoot(t)
	st := &fakeStorage{}
	h := newHarness(t, func(o *server.Options) { o.Storage = st })
	if _, err := h.agent.CreateSandbox(h.ctx(), &agentpb.CreateSandboxRequest{SandboxId: "sb",
		Storages: []*agentpb.Storage{{Driver: "virtio-fs", MountPoint: agenttest.SharedContainersDir}}}); err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	spec := agenttest.Spec(agenttest.BusyboxRootfs(t, h.shared, "a"), "sleep", "1000")
	if _, err := h.agent.CreateContainer(h.ctx(), &agentpb.CreateContainerRequest{ContainerId: "a", OCI: spec,
		Storages: []*agentpb.Storage{{Driver: "local", MountPoint: "/run/a-local"}}}); err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	h.start("a")
	h.running("b")
	if _, err := h.agent.DestroySandbox(h.ctx(), &agentpb.DestroySandboxRequest{}); err != nil {
		t.Fatalf("DestroySandbox: %v", err)
	}
	for _, id := range []string{"a", "b"} {
		if _, err := h.agent.StatsContainer(h.ctx(), &agentpb.StatsContainerRequest{ContainerId: id}); status.Code(err) != codes.NotFound {
			t.Errorf("container %s after destroy: got %v, want NotFound", id, err)
		}
	}
	got := st.log()
	want := []string{"mount  " + agenttest.SharedContainersDir, "mount a /run/a-local", "unmount a", "unmount "}
	if !slices.Equal(got, want) {
		t.Errorf("storage calls: got %q, want %q", got, want)
	}
	if _, err := h.agent.DestroySandbox(h.ctx(), &agentpb.DestroySandboxRequest{}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("second destroy: got %v, want FailedPrecondition", err)
	}
	// A new sandbox can follow.
	h.sandbox()
}

func TestGuestRPCs(t *testing.T) {
	sys := t.TempDir()
	proc := t.TempDir()
	random := filepath.Join(t.TempDir(), "random")
	files := map[string]string{
		"devices/system/memory/block_size_bytes": "8000000\n",
		"devices/system/cpu/cpu0/dummy":          "",
		"devices/system/cpu/cpu1/online":         "0\n",
		"devices/system/cpu/cpu2/online":         "0\n",
		"devices/system/cpu/cpu3/online":         "1\n",
		"devices/system/memory/memory0/state":    "offline\n",
	}
	for name, content := range files {
		p := filepath.Join(sys, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(proc, "meminfo"), []byte("MemTotal:       1024 kB\nMemFree:         512 kB\nHugePages_Total:       0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(proc, "loadavg"), []byte("0.50 0.25 0.10 1/100 42\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(random, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// PID1 only to exercise CPU onlining against the fake sysfs; this test
	// must not call CreateSandbox or SetGuestDateTime.
	h := newHarness(t, func(o *server.Options) {
		o.SysfsRoot, o.ProcRoot, o.RandomDevice, o.PID1 = sys, proc, random, true
	})

	d, err := h.agent.GetGuestDetails(h.ctx(), &agentpb.GuestDetailsRequest{MemBlockSize: true, MemHotplugProbe: true})
	if err != nil {
		t.Fatalf("GetGuestDetails: %v", err)
	}
	if got, want := d.MemBlockSizeBytes, uint64(128<<20); got != want {
		t.Errorf("memory block size: got %d, want %d", got, want)
	}
	if d.SupportMemHotplugProbe {
		t.Errorf("probe support: got true, want false (no probe file)")
	}
	if got := d.AgentDetails.GetVersion(); got != "test" {
		t.Errorf("agent version: got %q, want %q", got, "test")
	}
	if !d.AgentDetails.GetInitDaemon() {
		t.Errorf("init daemon: got false, want true")
	}

	if _, err := h.agent.OnlineCPUMem(h.ctx(), &agentpb.OnlineCPUMemRequest{NbCpus: 1}); err != nil {
		t.Fatalf("OnlineCPUMem: %v", err)
	}
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(sys, name))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	if got := read("devices/system/cpu/cpu1/online"); got != "1" {
		t.Errorf("cpu1: got %q, want 1", got)
	}
	if got := read("devices/system/cpu/cpu2/online"); got != "0" {
		t.Errorf("cpu2 beyond nb_cpus: got %q, want 0", got)
	}
	if got := read("devices/system/memory/memory0/state"); got != "online" {
		t.Errorf("memory0: got %q, want online", got)
	}

	if _, err := h.agent.ReseedRandomDev(h.ctx(), &agentpb.ReseedRandomDevRequest{Data: []byte("entropy")}); err != nil {
		t.Fatalf("ReseedRandomDev: %v", err)
	}
	if b, _ := os.ReadFile(random); string(b) != "entropy" {
		t.Errorf("random device got %q, want %q", b, "entropy")
	}

	m, err := h.agent.GetMetrics(h.ctx(), &agentpb.GetMetricsRequest{})
	if err != nil {
		t.Fatalf("GetMetrics: %v", err)
	}
	for _, want := range []string{
		`cocoon_guest_meminfo_bytes{field="MemTotal"} 1048576`,
		`cocoon_guest_meminfo_bytes{field="HugePages_Total"} 0`,
		"cocoon_guest_load5 0.25",
		"# TYPE cocoon_agent_goroutines gauge",
		"cocoon_agent_containers 0",
	} {
		if !strings.Contains(m.Metrics, want) {
			t.Errorf("metrics lack %q:\n%s", want, m.Metrics)
		}
	}
}

func TestInterceptorsRunInOrder(t *testing.T) {
	var (
		mu    sync.Mutex
		calls []string
	)
	mk := func(name string, deny bool) ttrpc.UnaryServerInterceptor {
		return func(ctx context.Context, u ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, m ttrpc.Method) (any, error) {
			mu.Lock()
			calls = append(calls, name+" "+info.FullMethod)
			mu.Unlock()
			if deny {
				return nil, status.Error(codes.PermissionDenied, "denied by test")
			}
			return m(ctx, u)
		}
	}
	h := newHarness(t, func(o *server.Options) {
		o.Interceptors = []ttrpc.UnaryServerInterceptor{mk("first", false), mk("second", true)}
	})
	_, err := h.agent.GetMetrics(h.ctx(), &agentpb.GetMetricsRequest{})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("denied call: got %v, want PermissionDenied", err)
	}
	want := []string{"first /grpc.AgentService/GetMetrics", "second /grpc.AgentService/GetMetrics"}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(calls, want) {
		t.Errorf("interceptor calls: got %q, want %q", calls, want)
	}
}

func TestOOMEvent(t *testing.T) {
	agenttest.RequireRoot(t)
	h := newHarness(t, nil)
	h.sandbox()
	spec := agenttest.Spec(agenttest.BusyboxRootfs(t, h.shared, "oom"), "tail", "/dev/zero")
	spec.Linux.Resources.Memory = &agentpb.LinuxMemory{Limit: 32 << 20}
	h.createSpec("oom", spec)
	h.start("oom")
	ev, err := h.agent.GetOOMEvent(h.ctx(), &agentpb.GetOOMEventRequest{})
	if err != nil {
		t.Fatalf("GetOOMEvent: %v", err)
	}
	if ev.ContainerId != "oom" {
		t.Errorf("oom container: got %q, want %q", ev.ContainerId, "oom")
	}
	if got, want := h.wait("oom", ""), int32(137); got != want {
		t.Errorf("exit status: got %d, want %d", got, want)
	}
}

// TestCreateRemoveLeaks runs 100 create/start/wait/remove cycles and checks
// that goroutines, descriptors, mounts and cgroups return to where they were.
func TestCreateRemoveLeaks(t *testing.T) {
	agenttest.RequireRoot(t)
	h := newHarness(t, nil)
	h.sandbox()
	rootfs := agenttest.BusyboxRootfs(t, h.shared, "loop")
	cycle := func(i int) {
		id := fmt.Sprintf("loop%d", i)
		h.createSpec(id, agenttest.Spec(rootfs, "sh", "-c", "echo $0", id))
		h.start(id)
		if got, want := h.readAll(id, "", false), id+"\n"; got != want {
			t.Fatalf("cycle %d: stdout %q, want %q", i, got, want)
		}
		if got := h.wait(id, ""); got != 0 {
			t.Fatalf("cycle %d: exit status %d", i, got)
		}
		h.remove(id)
	}
	// Warm up lazily started goroutines (ttrpc, OOM watchers) once.
	cycle(-1)
	g0, fd0, m0 := runtime.NumGoroutine(), countFDs(t), countMounts(t)
	for i := range 100 {
		cycle(i)
	}
	var g, fd, m int
	for deadline := time.Now().Add(10 * time.Second); ; {
		g, fd, m = runtime.NumGoroutine(), countFDs(t), countMounts(t)
		if (g <= g0 && fd <= fd0 && m <= m0) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if g > g0 {
		t.Errorf("goroutines: %d before, %d after 100 cycles", g0, g)
	}
	if fd > fd0 {
		t.Errorf("open fds: %d before, %d after 100 cycles", fd0, fd)
	}
	if m > m0 {
		t.Errorf("mounts: %d before, %d after 100 cycles", m0, m)
	}
	for _, d := range cgroupDirs(h.cgroup) {
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			if e.IsDir() {
				t.Errorf("cgroup left: %s", filepath.Join(d, e.Name()))
			}
		}
	}
	ents, _ := os.ReadDir(h.runDir)
	if len(ents) != 0 {
		t.Errorf("bundles left in %s: %d", h.runDir, len(ents))
	}
}

func countFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func countMounts(t *testing.T) int {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "\n")
}
