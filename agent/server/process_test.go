package server_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	"github.com/cocoon-containers/cocoon/agent/agenttest"
	"github.com/cocoon-containers/cocoon/rpc/agentpb"
)

// running creates and starts a long-lived container.
func (h *harness) running(id string) {
	h.t.Helper()
	h.create(id, "sleep", "1000")
	h.start(id)
}

func (h *harness) exec(id, execID string, terminal bool, args ...string) {
	h.t.Helper()
	p := &agentpb.Process{Args: args, Env: []string{"PATH=/bin"}, Cwd: "/", User: &agentpb.User{}, Terminal: terminal}
	if terminal {
		p.ConsoleSize = &agentpb.Box{Height: 24, Width: 80}
	}
	if _, err := h.agent.ExecProcess(h.ctx(), &agentpb.ExecProcessRequest{ContainerId: id, ExecId: execID, Process: p}); err != nil {
		h.t.Fatalf("ExecProcess %s/%s: %v", id, execID, err)
	}
}

func TestExecWithStdin(t *testing.T) {
	agenttest.RequireRoot(t)
	h := newHarness(t, nil)
	h.sandbox()
	h.running("c")
	h.exec("c", "cat", false, "cat")
	resp, err := h.agent.WriteStdin(h.ctx(), &agentpb.WriteStreamRequest{ContainerId: "c", ExecId: "cat", Data: []byte("to cat\n")})
	if err != nil {
		t.Fatalf("WriteStdin: %v", err)
	}
	if got, want := resp.Len, uint32(7); got != want {
		t.Errorf("written: got %d, want %d", got, want)
	}
	if _, err := h.agent.CloseStdin(h.ctx(), &agentpb.CloseStdinRequest{ContainerId: "c", ExecId: "cat"}); err != nil {
		t.Fatalf("CloseStdin: %v", err)
	}
	if got, want := h.readAll("c", "cat", false), "to cat\n"; got != want {
		t.Errorf("stdout: got %q, want %q", got, want)
	}
	if got := h.wait("c", "cat"); got != 0 {
		t.Errorf("exit status: got %d, want 0", got)
	}
	// Waited and drained: the exec is freed and its id can be reused.
	if _, err := h.agent.WaitProcess(h.ctx(), &agentpb.WaitProcessRequest{ContainerId: "c", ExecId: "cat"}); code(err) != codes.NotFound {
		t.Errorf("wait after free: got %v, want NotFound", err)
	}
	h.exec("c", "cat", false, "true")
	if got := h.wait("c", "cat"); got != 0 {
		t.Errorf("reused exec id: exit status %d, want 0", got)
	}
}

func TestTerminalAndResize(t *testing.T) {
	agenttest.RequireRoot(t)
	h := newHarness(t, nil)
	h.sandbox()
	h.running("c")
	h.exec("c", "tty", true, "sh", "-c", "read line; stty size; tty; echo got:$line")
	if _, err := h.agent.TtyWinResize(h.ctx(), &agentpb.TtyWinResizeRequest{ContainerId: "c", ExecId: "tty", Row: 33, Column: 101}); err != nil {
		t.Fatalf("TtyWinResize: %v", err)
	}
	if _, err := h.agent.WriteStdin(h.ctx(), &agentpb.WriteStreamRequest{ContainerId: "c", ExecId: "tty", Data: []byte("abc\n")}); err != nil {
		t.Fatalf("WriteStdin: %v", err)
	}
	out := strings.ReplaceAll(h.readAll("c", "tty", false), "\r", "")
	for _, want := range []string{"33 101\n", "/dev/pts/", "got:abc\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("terminal output %q lacks %q", out, want)
		}
	}
	if got := h.readAll("c", "tty", true); got != "" {
		t.Errorf("stderr of a terminal: got %q, want nothing", got)
	}
	if got := h.wait("c", "tty"); got != 0 {
		t.Errorf("exit status: got %d, want 0", got)
	}
	// A pipe process has no terminal to resize.
	h.exec("c", "plain", false, "sleep", "100")
	_, err := h.agent.TtyWinResize(h.ctx(), &agentpb.TtyWinResizeRequest{ContainerId: "c", ExecId: "plain", Row: 1, Column: 1})
	if code(err) != codes.FailedPrecondition {
		t.Errorf("resize without terminal: got %v, want FailedPrecondition", err)
	}
}

func TestSignal(t *testing.T) {
	agenttest.RequireRoot(t)
	h := newHarness(t, nil)
	h.sandbox()
	h.running("c")
	h.exec("c", "s1", false, "sleep", "100")
	if _, err := h.agent.SignalProcess(h.ctx(), &agentpb.SignalProcessRequest{ContainerId: "c", ExecId: "s1", Signal: uint32(unix.SIGTERM)}); err != nil {
		t.Fatalf("SignalProcess: %v", err)
	}
	if got, want := h.wait("c", "s1"), int32(128+unix.SIGTERM); got != want {
		t.Errorf("exec exit status: got %d, want %d", got, want)
	}
	h.exec("c", "s2", false, "sleep", "100")
	// "" signals every process of the container.
	if _, err := h.agent.SignalProcess(h.ctx(), &agentpb.SignalProcessRequest{ContainerId: "c", Signal: uint32(unix.SIGKILL)}); err != nil {
		t.Fatalf("SignalProcess all: %v", err)
	}
	if got, want := h.wait("c", "s2"), int32(128+unix.SIGKILL); got != want {
		t.Errorf("exec exit status: got %d, want %d", got, want)
	}
	if got, want := h.wait("c", "c"), int32(128+unix.SIGKILL); got != want {
		t.Errorf("init exit status: got %d, want %d", got, want)
	}
	_, err := h.agent.SignalProcess(h.ctx(), &agentpb.SignalProcessRequest{ContainerId: "c", ExecId: "c", Signal: uint32(unix.SIGKILL)})
	if code(err) != codes.FailedPrecondition {
		t.Errorf("signal after exit: got %v, want FailedPrecondition", err)
	}
}

func TestPauseResumeStatsUpdate(t *testing.T) {
	agenttest.RequireRoot(t)
	h := newHarness(t, nil)
	h.sandbox()
	h.running("c")
	if _, err := h.agent.PauseContainer(h.ctx(), &agentpb.PauseContainerRequest{ContainerId: "c"}); err != nil {
		t.Fatalf("PauseContainer: %v", err)
	}
	_, err := h.agent.ExecProcess(h.ctx(), &agentpb.ExecProcessRequest{ContainerId: "c", ExecId: "x",
		Process: &agentpb.Process{Args: []string{"true"}, Cwd: "/", User: &agentpb.User{}}})
	if code(err) != codes.FailedPrecondition {
		t.Errorf("exec in a paused container: got %v, want FailedPrecondition", err)
	}
	if _, err := h.agent.ResumeContainer(h.ctx(), &agentpb.ResumeContainerRequest{ContainerId: "c"}); err != nil {
		t.Fatalf("ResumeContainer: %v", err)
	}
	if _, err := h.agent.ResumeContainer(h.ctx(), &agentpb.ResumeContainerRequest{ContainerId: "c"}); code(err) != codes.FailedPrecondition {
		t.Errorf("resume running container: got %v, want FailedPrecondition", err)
	}
	h.exec("c", "after", false, "echo", "thawed")
	if got, want := h.readAll("c", "after", false), "thawed\n"; got != want {
		t.Errorf("after resume: got %q, want %q", got, want)
	}

	const limit = 256 << 20
	if _, err := h.agent.UpdateContainer(h.ctx(), &agentpb.UpdateContainerRequest{ContainerId: "c", Resources: &agentpb.LinuxResources{
		Memory: &agentpb.LinuxMemory{Limit: limit},
		Pids:   &agentpb.LinuxPids{Limit: 50},
	}}); err != nil {
		t.Fatalf("UpdateContainer: %v", err)
	}
	st, err := h.agent.StatsContainer(h.ctx(), &agentpb.StatsContainerRequest{ContainerId: "c"})
	if err != nil {
		t.Fatalf("StatsContainer: %v", err)
	}
	cg := st.CgroupStats
	if got := cg.GetMemoryStats().GetUsage().GetLimit(); got != limit {
		t.Errorf("memory limit: got %d, want %d", got, limit)
	}
	if got := cg.GetPidsStats().GetLimit(); got != 50 {
		t.Errorf("pids limit: got %d, want 50", got)
	}
	if got := cg.GetPidsStats().GetCurrent(); got < 1 {
		t.Errorf("pids current: got %d, want at least 1", got)
	}
	if got := cg.GetCpuStats().GetCpuUsage().GetTotalUsage(); got == 0 {
		t.Errorf("cpu usage: got 0, want > 0")
	}
	if got := cg.GetMemoryStats().GetUsage().GetUsage(); got == 0 {
		t.Errorf("memory usage: got 0, want > 0")
	}
}

func TestConcurrentExecs(t *testing.T) {
	agenttest.RequireRoot(t)
	h := newHarness(t, nil)
	h.sandbox()
	h.running("c")
	const n = 16
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("e%d", i)
			p := &agentpb.Process{Args: []string{"sh", "-c", fmt.Sprintf("echo %d; exit %d", i, i)}, Env: []string{"PATH=/bin"}, Cwd: "/", User: &agentpb.User{}}
			if _, err := h.agent.ExecProcess(h.ctx(), &agentpb.ExecProcessRequest{ContainerId: "c", ExecId: id, Process: p}); err != nil {
				errs <- fmt.Errorf("exec %s: %w", id, err)
				return
			}
			resp, err := h.agent.ReadStdout(h.ctx(), &agentpb.ReadStreamRequest{ContainerId: "c", ExecId: id, Len: 100})
			if err != nil {
				errs <- fmt.Errorf("read %s: %w", id, err)
				return
			}
			if got, want := string(resp.Data), fmt.Sprintf("%d\n", i); got != want {
				errs <- fmt.Errorf("%s stdout: got %q, want %q", id, got, want)
			}
			w, err := h.agent.WaitProcess(h.ctx(), &agentpb.WaitProcessRequest{ContainerId: "c", ExecId: id})
			if err != nil {
				errs <- fmt.Errorf("wait %s: %w", id, err)
				return
			}
			if w.Status != int32(i) {
				errs <- fmt.Errorf("%s status: got %d, want %d", id, w.Status, i)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestRemoveTimeout(t *testing.T) {
	agenttest.RequireRoot(t)
	h := newHarness(t, nil)
	h.sandbox()
	h.running("c")
	start := time.Now()
	if _, err := h.agent.RemoveContainer(h.ctx(), &agentpb.RemoveContainerRequest{ContainerId: "c", Timeout: 10}); err != nil {
		t.Fatalf("RemoveContainer: %v", err)
	}
	if d := time.Since(start); d > 9*time.Second {
		t.Errorf("remove of a running container took %v: it must kill, not wait for the timeout", d)
	}
	if _, err := h.agent.RemoveContainer(h.ctx(), &agentpb.RemoveContainerRequest{ContainerId: "c"}); code(err) != codes.NotFound {
		t.Errorf("second remove: got %v, want NotFound", err)
	}
}

func TestExecAsNamedUser(t *testing.T) {
	agenttest.RequireRoot(t)
	h := newHarness(t, nil)
	h.sandbox()
	h.running("c")
	p := &agentpb.Process{Args: []string{"sh", "-c", "id -u; id -g"}, Env: []string{"PATH=/bin"}, Cwd: "/", User: &agentpb.User{}}
	if _, err := h.agent.ExecProcess(h.ctx(), &agentpb.ExecProcessRequest{ContainerId: "c", ExecId: "u", Process: p,
		StringUser: &agentpb.StringUser{Uid: "nobody"}}); err != nil {
		t.Fatalf("ExecProcess as nobody: %v", err)
	}
	if got, want := h.readAll("c", "u", false), "65534\n65534\n"; got != want {
		t.Errorf("ids: got %q, want %q", got, want)
	}
	if got := h.wait("c", "u"); got != 0 {
		t.Errorf("exit status: got %d, want 0", got)
	}
}
