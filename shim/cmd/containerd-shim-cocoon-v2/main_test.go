package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-containers/cocoon/hostvmm/vmtest"
	"github.com/cocoon-containers/cocoon/shim/shimtest"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/namespaces"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"
)

// cd is the package's containerd, booted once in TestMain; nil when the
// tests are skipped (under -short or not root).
var cd *shimtest.Containerd

const runtimeName = "io.containerd.cocoon.v2"

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	// testing.Short needs flags parsed.
	flagsParse()
	if testing.Short() || os.Geteuid() != 0 {
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "cocoon-shim-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	defer vmtest.RemoveShared()
	// No deadline of its own: go test -timeout bounds the whole run.
	ctx := context.Background()
	c := &shimtest.Containerd{Dir: filepath.Join(dir, "containerd"), BinDir: filepath.Join(dir, "bin")}
	// This shim and the real agent, under the process launcher: containerd
	// <-> shim <-> agent API <-> libcontainer, without a VM.
	if err := shimtest.BuildShim(ctx, c.BinDir, "github.com/cocoon-containers/cocoon/shim/cmd/containerd-shim-cocoon-v2"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	agent, err := vmtest.BuildAgent(ctx, c.BinDir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	cfg := filepath.Join(dir, "configuration.toml")
	sandboxesDir = filepath.Join(dir, "sandboxes")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("[sandbox]\nlauncher = \"process\"\nagent = %q\nstate_dir = %q\n", agent, sandboxesDir)), 0o600); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	configPath = cfg
	if err := c.Start(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Cleanup(context.Background())
	if err := c.ImportBusybox(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err, c.LogTail())
		return 1
	}
	cd = c
	return m.Run()
}

var configPath string

// sandboxesDir holds the process-mode sandboxes' state.
var sandboxesDir string

func requireContainerd(t *testing.T) *shimtest.Containerd {
	t.Helper()
	shimtest.RequireRoot(t)
	if cd == nil {
		t.Fatal("containerd harness did not start")
	}
	return cd
}

func ctrRun(ctx context.Context, c *shimtest.Containerd, stdin []byte, flags []string, id string, args ...string) (string, string, error) {
	full := append([]string{"run", "--runtime", runtimeName, "--runtime-config-path", configPath}, flags...)
	full = append(full, shimtest.BusyboxImageName, id)
	full = append(full, args...)
	return c.CtrInput(ctx, stdin, full...)
}

func TestRunOutputAndExitCode(t *testing.T) {
	c := requireContainerd(t)
	tests := []struct {
		name    string
		args    []string
		stdin   string
		wantOut string
		wantErr bool
	}{
		{name: "echo", args: []string{"echo", "hello from cocoon"}, wantOut: "hello from cocoon\n"},
		{name: "rootfs is the image", args: []string{"sh", "-c", "ls /bin/busybox && cat /etc/passwd | head -1"}, wantOut: "/bin/busybox\nroot:x:0:0:root:/root:/bin/sh\n"},
		{name: "exit code", args: []string{"sh", "-c", "exit 3"}, wantErr: true},
		{name: "stdin", args: []string{"sh", "-c", "read x; echo got $x"}, stdin: "ping\n", wantOut: "got ping\n"},
		// The exit is reported only after all output reached ctr: a
		// process that writes 1 MiB and exits at once loses none of it.
		{name: "output drained before exit", args: []string{"sh", "-c", "head -c 1048576 /dev/zero | tr '\\0' x"}, wantOut: strings.Repeat("x", 1<<20)},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			var stdin []byte
			flags := []string{"--rm"}
			if tt.stdin != "" {
				stdin = []byte(tt.stdin)
			}
			out, _, err := ctrRun(ctx, c, stdin, flags, fmt.Sprintf("run-%d", i), tt.args...)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("got success, want a failing exit status")
				}
				if !strings.Contains(err.Error(), "exit status 3") {
					t.Errorf("got %v, want ctr to exit with 3", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("%v\n%s", err, c.LogTail())
			}
			if got, want := out, tt.wantOut; got != want {
				if len(got) > 200 || len(want) > 200 {
					t.Errorf("output: got %d bytes, want %d", len(got), len(want))
				} else {
					t.Errorf("output: got %q, want %q", got, want)
				}
			}
		})
	}
}

// TestRunLeavesNothing: after `ctr run --rm`, no mount, process or state
// of the sandbox is left.
func TestRunLeavesNothing(t *testing.T) {
	c := requireContainerd(t)
	ctx := context.Background()
	if _, _, err := ctrRun(ctx, c, nil, []string{"--rm"}, "tidy", "true"); err != nil {
		t.Fatalf("%v\n%s", err, c.LogTail())
	}
	state := filepath.Join(sandboxesDir, "tidy")
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Errorf("sandbox state left: %v", err)
	}
	if mi, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mi), state) {
		t.Errorf("mounts left under %s", state)
	}
	if left := processesUnder(state); len(left) != 0 {
		t.Errorf("processes left: %v", left)
	}
}

func TestExecAndKill(t *testing.T) {
	c := requireContainerd(t)
	ctx := context.Background()
	if _, _, err := ctrRun(ctx, c, nil, []string{"-d"}, "long", "sleep", "1000"); err != nil {
		t.Fatalf("%v\n%s", err, c.LogTail())
	}
	defer c.Ctr(ctx, "containers", "delete", "long")
	out, _, err := c.Ctr(ctx, "tasks", "exec", "--exec-id", "e1", "long", "sh", "-c", "echo exec ok; exit 0")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := out, "exec ok\n"; got != want {
		t.Errorf("exec output: got %q, want %q", got, want)
	}
	if _, _, err := c.Ctr(ctx, "tasks", "exec", "--exec-id", "e2", "long", "sh", "-c", "exit 4"); err == nil || !strings.Contains(err.Error(), "exit status 4") {
		t.Errorf("exec exit: got %v, want exit status 4", err)
	}
	out, _, err = c.CtrInput(ctx, []byte("abc\n"), "tasks", "exec", "--exec-id", "e3", "long", "sh", "-c", "read x; echo $x$x")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := out, "abcabc\n"; got != want {
		t.Errorf("exec stdin: got %q, want %q", got, want)
	}
	out, _, err = c.Ctr(ctx, "tasks", "ls")
	if err != nil || !strings.Contains(out, "RUNNING") {
		t.Errorf("tasks ls: got %q, %v, want long RUNNING", out, err)
	}
	if _, _, err := c.Ctr(ctx, "tasks", "kill", "-s", "SIGKILL", "long"); err != nil {
		t.Fatal(err)
	}
	for {
		out, _, _ := c.Ctr(ctx, "tasks", "ls")
		if strings.Contains(out, "STOPPED") {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, _, err := c.Ctr(ctx, "tasks", "delete", "long"); err != nil {
		t.Fatal(err)
	}
}

func TestTerminal(t *testing.T) {
	c := requireContainerd(t)
	ctx := context.Background()
	// ctr -t needs a terminal of its own.
	// ctr resizes the task's terminal only after starting it (the spec
	// carries no size), so the script waits for the size to arrive: it
	// went ctr -> containerd -> ResizePty -> agent TtyWinResize.
	// (On a 0x0 terminal busybox stty fails or prints nothing; others
	// print "0 0".)
	script := `test -t 1 && echo is a tty; until s=$(stty size 2>/dev/null); [ -n "$s" ] && [ "$s" != "0 0" ]; do sleep 0.02; done; echo "$s"`
	args := []string{"run", "--runtime", runtimeName, "--runtime-config-path", configPath, "--rm", "-t",
		shimtest.BusyboxImageName, "tty", "sh", "-c", script}
	out, err := c.CtrTTY(ctx, 33, 101, args...)
	if err != nil {
		t.Fatalf("%v\n%s", err, c.LogTail())
	}
	if got, want := strings.ReplaceAll(out, "\r", ""), "is a tty\n33 101\n"; got != want {
		t.Errorf("terminal output: got %q, want %q", got, want)
	}
}

func TestPodViaAnnotations(t *testing.T) {
	c := requireContainerd(t)
	ctx := context.Background()
	sandboxAnn := []string{"-d", "--annotation", "io.kubernetes.cri.container-type=sandbox", "--annotation", "io.kubernetes.cri.sandbox-id=pod1"}
	if _, _, err := c.Ctr(ctx, append(append([]string{"run", "--runtime", runtimeName, "--runtime-config-path", configPath}, sandboxAnn...), shimtest.PauseImageName, "pod1")...); err != nil {
		t.Fatalf("%v\n%s", err, c.LogTail())
	}
	defer func() {
		c.Ctr(ctx, "tasks", "kill", "-s", "SIGKILL", "pod1")
		c.Ctr(ctx, "tasks", "delete", "--force", "pod1")
		c.Ctr(ctx, "containers", "delete", "pod1")
	}()
	appAnn := []string{"--rm", "--annotation", "io.kubernetes.cri.container-type=container", "--annotation", "io.kubernetes.cri.sandbox-id=pod1"}
	out, _, err := ctrRun(ctx, c, nil, appAnn, "app1", "echo", "in the pod")
	if err != nil {
		t.Fatalf("%v\n%s", err, c.LogTail())
	}
	if got, want := out, "in the pod\n"; got != want {
		t.Errorf("app output: got %q, want %q", got, want)
	}
	// Both containers were served by the pod's one shim: the bundles carry
	// the same shim address.
	a1, err1 := os.ReadFile(filepath.Join(c.StateDir(), "io.containerd.runtime.v2.task", shimtest.Namespace, "pod1", "address"))
	if err1 != nil {
		t.Fatal(err1)
	}
	if _, _, err := ctrRun(ctx, c, nil, []string{"-d", "--annotation", "io.kubernetes.cri.container-type=container", "--annotation", "io.kubernetes.cri.sandbox-id=pod1"}, "app2", "sleep", "100"); err != nil {
		t.Fatal(err)
	}
	defer func() {
		c.Ctr(ctx, "tasks", "kill", "-s", "SIGKILL", "app2")
		c.Ctr(ctx, "tasks", "delete", "--force", "app2")
		c.Ctr(ctx, "containers", "delete", "app2")
	}()
	a2, err2 := os.ReadFile(filepath.Join(c.StateDir(), "io.containerd.runtime.v2.task", shimtest.Namespace, "app2", "address"))
	if err2 != nil {
		t.Fatal(err2)
	}
	if string(a1) != string(a2) {
		t.Errorf("shim addresses: got %q and %q, want the pod's one shim", a1, a2)
	}
}

// TestKillOneOrAll: `ctr tasks kill --exec-id` signals that exec only; a
// plain kill signals the init process only; --all signals every process of
// the container. Each process traps the signals to exit with its own code,
// so the exit codes say which signal reached it.
func TestKillOneOrAll(t *testing.T) {
	c := requireContainerd(t)
	ctx := context.Background()
	const id = "killer"
	// The init process ignores TERM and INT.
	if _, _, err := ctrRun(ctx, c, nil, []string{"-d"}, id, "sh", "-c", `trap "" TERM INT; while :; do sleep 0.05; done`); err != nil {
		t.Fatalf("%v\n%s", err, c.LogTail())
	}
	defer removeTask(ctx, c, id)
	type execution struct {
		cmd  *exec.Cmd
		done chan error
	}
	start := func(eid string) execution {
		t.Helper()
		cmd := exec.CommandContext(ctx, "ctr", "--address", c.Address, "--namespace", shimtest.Namespace,
			"tasks", "exec", "--exec-id", eid, id, "sh", "-c", `trap "exit 7" TERM; trap "exit 9" INT; echo up; while :; do sleep 0.05; done`)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(out).ReadString('\n')
		if line != "up\n" {
			cmd.Process.Kill()
			t.Fatalf("exec %s: got %q, %v, want up", eid, line, err)
		}
		e := execution{cmd: cmd, done: make(chan error, 1)}
		go func() {
			io.Copy(io.Discard, out)
			e.done <- cmd.Wait()
		}()
		return e
	}
	exitCode := func(e execution) int {
		err := <-e.done
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			return 0
		}
		return ee.ExitCode()
	}
	e1, e2 := start("e1"), start("e2")
	if _, _, err := c.Ctr(ctx, "tasks", "kill", "-s", "SIGTERM", "--exec-id", "e1", id); err != nil {
		t.Fatal(err)
	}
	if got, want := exitCode(e1), 7; got != want {
		t.Errorf("e1 after kill --exec-id e1 TERM: exit %d, want %d", got, want)
	}
	if _, _, err := c.Ctr(ctx, "tasks", "kill", "-s", "SIGTERM", id); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Ctr(ctx, "tasks", "kill", "-s", "SIGINT", "--all", id); err != nil {
		t.Fatal(err)
	}
	// 9: e2 got INT from --all and not TERM from the init-only kill.
	if got, want := exitCode(e2), 9; got != want {
		t.Errorf("e2 after kill TERM then kill --all INT: exit %d, want %d", got, want)
	}
	if out, _, err := c.Ctr(ctx, "tasks", "ls"); err != nil || !strings.Contains(out, id) || !strings.Contains(out, "RUNNING") {
		t.Errorf("the init process ignores both signals: tasks ls %q, %v, want %s RUNNING", out, err, id)
	}
}

// TestPauseResume: a paused container's processes stop (a counter it
// writes into its rootfs stays put) and go on after resume.
func TestPauseResume(t *testing.T) {
	c := requireContainerd(t)
	ctx := context.Background()
	const id = "freezer"
	if _, _, err := ctrRun(ctx, c, nil, []string{"-d"}, id, "sh", "-c", `i=0; while :; do i=$((i+1)); echo $i > /n.tmp; mv /n.tmp /n; sleep 0.01; done`); err != nil {
		t.Fatalf("%v\n%s", err, c.LogTail())
	}
	defer removeTask(ctx, c, id)
	// The bundle's rootfs is the container's root under the process
	// launcher.
	counter := filepath.Join(c.StateDir(), "io.containerd.runtime.v2.task", shimtest.Namespace, id, "rootfs", "n")
	read := func() string {
		b, _ := os.ReadFile(counter)
		return strings.TrimSpace(string(b))
	}
	// changes polls until the counter moves on from v.
	changes := func(v string) string {
		for {
			if n := read(); n != "" && n != v {
				return n
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	changes("")
	if _, _, err := c.Ctr(ctx, "tasks", "pause", id); err != nil {
		t.Fatalf("%v\n%s", err, c.LogTail())
	}
	if out, _, err := c.Ctr(ctx, "tasks", "ls"); err != nil || !strings.Contains(out, "PAUSED") {
		t.Errorf("tasks ls after pause: %q, %v, want PAUSED", out, err)
	}
	before := read()
	// The loop writes every 10ms when it runs.
	time.Sleep(300 * time.Millisecond)
	if after := read(); after != before {
		t.Errorf("counter moved while paused: %s -> %s", before, after)
	}
	if _, _, err := c.Ctr(ctx, "tasks", "resume", id); err != nil {
		t.Fatal(err)
	}
	if out, _, err := c.Ctr(ctx, "tasks", "ls"); err != nil || !strings.Contains(out, "RUNNING") {
		t.Errorf("tasks ls after resume: %q, %v, want RUNNING", out, err)
	}
	changes(before)
}

// TestMetricsAndUpdate: ctr tasks metrics gets the container's cgroup
// statistics from the agent through Stats; ctr tasks update changes its
// memory limit through Update, and the metrics show the new limit.
func TestMetricsAndUpdate(t *testing.T) {
	c := requireContainerd(t)
	ctx := context.Background()
	const id = "measured"
	if _, _, err := ctrRun(ctx, c, nil, []string{"-d"}, id, "sleep", "1000"); err != nil {
		t.Fatalf("%v\n%s", err, c.LogTail())
	}
	defer removeTask(ctx, c, id)
	type metrics struct {
		Pids struct {
			Current uint64 `json:"current"`
		} `json:"pids"`
		CPU struct {
			Usage struct {
				Total uint64 `json:"total"`
			} `json:"usage"`
		} `json:"cpu"`
		Memory struct {
			Usage struct {
				Limit uint64 `json:"limit"`
				Usage uint64 `json:"usage"`
			} `json:"usage"`
		} `json:"memory"`
	}
	get := func() metrics {
		t.Helper()
		out, _, err := c.Ctr(ctx, "tasks", "metrics", "--format", "json", id)
		if err != nil {
			t.Fatalf("%v\n%s", err, c.LogTail())
		}
		var m metrics
		if err := json.Unmarshal([]byte(out), &m); err != nil {
			t.Fatalf("metrics %q: %v", out, err)
		}
		return m
	}
	m := get()
	if m.Pids.Current == 0 || m.CPU.Usage.Total == 0 || m.Memory.Usage.Usage == 0 {
		t.Errorf("metrics: got %+v, want some processes, CPU time and memory", m)
	}
	const limit = 64 << 20
	if m.Memory.Usage.Limit == limit {
		t.Fatalf("the memory limit is already %d", limit)
	}
	// ctr 1.6 has no tasks update: call containerd's tasks service.
	conn, err := grpc.NewClient("unix://"+c.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	l := int64(limit)
	res, err := json.Marshal(&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &l}})
	if err != nil {
		t.Fatal(err)
	}
	nsCtx := namespaces.WithNamespace(ctx, shimtest.Namespace)
	if _, err := tasksapi.NewTasksClient(conn).Update(nsCtx, &tasksapi.UpdateTaskRequest{
		ContainerID: id,
		Resources:   &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources", Value: res},
	}); err != nil {
		t.Fatalf("%v\n%s", err, c.LogTail())
	}
	if got := get().Memory.Usage.Limit; got != limit {
		t.Errorf("memory limit after update: got %d, want %d", got, limit)
	}
}
