package task

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-containers/cocoon/shim/config"
	"github.com/cocoon-containers/cocoon/shim/sandbox"
	"github.com/cocoon-containers/cocoon/shim/shimtest"
	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/events"
	"github.com/containerd/containerd/protobuf"
	ptypes "github.com/containerd/containerd/protobuf/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/fifo"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// recorder is a publisher that keeps events in order.
type recorder struct {
	mu     sync.Mutex
	topics []string
	msgs   []any
}

func (r *recorder) Publish(ctx context.Context, topic string, msg events.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.topics = append(r.topics, topic)
	r.msgs = append(r.msgs, msg)
	return nil
}

// list waits until at least n events arrived and returns their topics.
func (r *recorder) list(n int) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	for len(r.topics) < n {
		r.mu.Unlock()
		time.Sleep(time.Millisecond)
		r.mu.Lock()
	}
	return append([]string(nil), r.topics...)
}

type env struct {
	t   *testing.T
	svc *Service
	rec *recorder
	l   *shimtest.Launcher
	dir string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	rec := &recorder{}
	l := &shimtest.Launcher{}
	ctx, cancel := context.WithCancel(context.Background())
	svc := New(ctx, Options{
		Launcher: func(config.Config) (sandbox.Launcher, error) { return l, nil },
		LoadConfig: func(path string) (config.Config, error) {
			return config.Parse([]byte(fmt.Sprintf("[sandbox]\nlauncher = \"process\"\nstate_dir = %q\n", state)))
		},
		Publisher: rec,
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	t.Cleanup(func() {
		svc.Shutdown(context.Background(), &taskAPI.ShutdownRequest{Now: true})
		cancel()
		svc.Close()
	})
	return &env{t: t, svc: svc, rec: rec, l: l, dir: dir}
}

// fifos makes containerd-style fifos and opens the shim's peers: a writer
// for stdin and readers for stdout/stderr.
type fifos struct {
	stdin, stdout, stderr string
	in                    io.WriteCloser
	out, errOut           *bytes.Buffer
	done                  sync.WaitGroup
}

func (e *env) fifos(name string, withStdin bool) *fifos {
	e.t.Helper()
	ctx := context.Background()
	f := &fifos{
		stdout: filepath.Join(e.dir, name+"-stdout"),
		stderr: filepath.Join(e.dir, name+"-stderr"),
		out:    &bytes.Buffer{},
		errOut: &bytes.Buffer{},
	}
	for _, p := range []struct {
		path string
		buf  *bytes.Buffer
	}{{f.stdout, f.out}, {f.stderr, f.errOut}} {
		r, err := fifo.OpenFifo(ctx, p.path, syscall.O_RDONLY|syscall.O_CREAT|syscall.O_NONBLOCK, 0o700)
		if err != nil {
			e.t.Fatal(err)
		}
		f.done.Add(1)
		go func(buf *bytes.Buffer) {
			defer f.done.Done()
			io.Copy(buf, r)
			r.Close()
		}(p.buf)
	}
	if withStdin {
		f.stdin = filepath.Join(e.dir, name+"-stdin")
		w, err := fifo.OpenFifo(ctx, f.stdin, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_NONBLOCK, 0o700)
		if err != nil {
			e.t.Fatal(err)
		}
		f.in = w
	}
	return f
}

func (e *env) bundle(id string, args []string, annotations map[string]string) string {
	e.t.Helper()
	b := filepath.Join(e.dir, "bundles", id)
	if err := os.MkdirAll(filepath.Join(b, "rootfs"), 0o755); err != nil {
		e.t.Fatal(err)
	}
	spec := specs.Spec{
		Version:     "1.1.0",
		Process:     &specs.Process{Args: args, Cwd: "/", Env: []string{"PATH=/usr/bin:/bin"}},
		Root:        &specs.Root{Path: "rootfs"},
		Annotations: annotations,
		Linux:       &specs.Linux{},
	}
	data, _ := json.Marshal(spec)
	if err := os.WriteFile(filepath.Join(b, "config.json"), data, 0o644); err != nil {
		e.t.Fatal(err)
	}
	return b
}

func (e *env) create(id string, args []string, ann map[string]string, f *fifos) {
	e.t.Helper()
	_, err := e.svc.Create(context.Background(), &taskAPI.CreateTaskRequest{
		ID: id, Bundle: e.bundle(id, args, ann), Stdin: f.stdin, Stdout: f.stdout, Stderr: f.stderr,
	})
	if err != nil {
		e.t.Fatalf("create %s: %v", id, err)
	}
}

func (e *env) wait(id, execID string) uint32 {
	e.t.Helper()
	resp, err := e.svc.Wait(context.Background(), &taskAPI.WaitRequest{ID: id, ExecID: execID})
	if err != nil {
		e.t.Fatalf("wait %s %s: %v", id, execID, err)
	}
	return resp.ExitStatus
}

func TestRunOutputAndExitCode(t *testing.T) {
	shimtest.RequireRoot(t)
	tests := []struct {
		name             string
		script           string
		wantOut, wantErr string
		wantCode         uint32
	}{
		{name: "echo", script: "echo hello; echo oops >&2", wantOut: "hello\n", wantErr: "oops\n"},
		{name: "exit code", script: "exit 7", wantCode: 7},
		{name: "large output", script: "head -c 300000 /dev/zero | tr '\\0' x", wantOut: strings.Repeat("x", 300000)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			ctx := context.Background()
			f := e.fifos("c1", false)
			e.create("c1", []string{"/bin/sh", "-c", tt.script}, nil, f)
			if _, err := e.svc.Start(ctx, &taskAPI.StartRequest{ID: "c1"}); err != nil {
				t.Fatal(err)
			}
			if got, want := e.wait("c1", ""), tt.wantCode; got != want {
				t.Errorf("exit status: got %d, want %d", got, want)
			}
			st, err := e.svc.State(ctx, &taskAPI.StateRequest{ID: "c1"})
			if err != nil {
				t.Fatal(err)
			}
			if got, want := st.Status, tasktypes.Status_STOPPED; got != want {
				t.Errorf("state: got %s, want %s", got, want)
			}
			resp, err := e.svc.Delete(ctx, &taskAPI.DeleteRequest{ID: "c1"})
			if err != nil {
				t.Fatal(err)
			}
			if got, want := resp.ExitStatus, tt.wantCode; got != want {
				t.Errorf("delete exit status: got %d, want %d", got, want)
			}
			f.done.Wait()
			if got, want := f.out.String(), tt.wantOut; got != want {
				t.Errorf("stdout: got %d bytes %.40q, want %d bytes %.40q", len(got), got, len(want), want)
			}
			if got, want := f.errOut.String(), tt.wantErr; got != want {
				t.Errorf("stderr: got %q, want %q", got, want)
			}
			if got, want := strings.Join(e.rec.list(4), " "), "/tasks/create /tasks/start /tasks/exit /tasks/delete"; got != want {
				t.Errorf("events: got %s, want %s", got, want)
			}
		})
	}
}

func TestExecStdinKill(t *testing.T) {
	shimtest.RequireRoot(t)
	e := newEnv(t)
	ctx := context.Background()
	f := e.fifos("c1", false)
	e.create("c1", []string{"/bin/sh", "-c", "exec sleep 1000"}, nil, f)
	if _, err := e.svc.Start(ctx, &taskAPI.StartRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	xf := e.fifos("x1", true)
	pspec, _ := json.Marshal(specs.Process{Args: []string{"/bin/sh", "-c", "read line; echo got $line; exit 3"}, Cwd: "/", Env: []string{"PATH=/usr/bin:/bin"}})
	_, err := e.svc.Exec(ctx, &taskAPI.ExecProcessRequest{ID: "c1", ExecID: "x1", Stdin: xf.stdin, Stdout: xf.stdout, Stderr: xf.stderr, Spec: &ptypes.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: pspec}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Start(ctx, &taskAPI.StartRequest{ID: "c1", ExecID: "x1"}); err != nil {
		t.Fatal(err)
	}
	xf.in.Write([]byte("ping\n"))
	xf.in.Close()
	if got, want := e.wait("c1", "x1"), uint32(3); got != want {
		t.Errorf("exec exit: got %d, want %d", got, want)
	}
	if _, err := e.svc.Delete(ctx, &taskAPI.DeleteRequest{ID: "c1", ExecID: "x1"}); err != nil {
		t.Fatal(err)
	}
	xf.done.Wait()
	if got, want := xf.out.String(), "got ping\n"; got != want {
		t.Errorf("exec stdout: got %q, want %q", got, want)
	}
	if _, err := e.svc.Kill(ctx, &taskAPI.KillRequest{ID: "c1", Signal: uint32(syscall.SIGTERM)}); err != nil {
		t.Fatal(err)
	}
	if got, want := e.wait("c1", ""), uint32(128+syscall.SIGTERM); got != want {
		t.Errorf("killed exit: got %d, want %d", got, want)
	}
	_, err = e.svc.Kill(ctx, &taskAPI.KillRequest{ID: "c1", Signal: uint32(syscall.SIGTERM)})
	if !errdefs.IsNotFound(errdefsFrom(err)) {
		t.Errorf("kill after exit: got %v, want not found", err)
	}
	if _, err := e.svc.Delete(ctx, &taskAPI.DeleteRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	want := "/tasks/create /tasks/start /tasks/exec-added /tasks/exec-started /tasks/exit /tasks/exit /tasks/delete"
	if got := strings.Join(e.rec.list(7), " "); got != want {
		t.Errorf("events: got %s, want %s", got, want)
	}
	e.rec.mu.Lock()
	ex := e.rec.msgs[4].(*eventstypes.TaskExit)
	e.rec.mu.Unlock()
	if got, want := ex.ID, "x1"; got != want {
		t.Errorf("exec exit event id: got %q, want %q", got, want)
	}
}

func TestPodTwoContainers(t *testing.T) {
	shimtest.RequireRoot(t)
	e := newEnv(t)
	ctx := context.Background()
	pf := e.fifos("pod", false)
	e.create("pod", []string{"/bin/sh", "-c", "exec sleep 1000"}, map[string]string{
		sandbox.AnnotationContainerType: "sandbox", sandbox.AnnotationSandboxID: "pod",
	}, pf)
	if _, err := e.svc.Start(ctx, &taskAPI.StartRequest{ID: "pod"}); err != nil {
		t.Fatal(err)
	}
	cf := e.fifos("app", false)
	e.create("app", []string{"/bin/sh", "-c", "echo app"}, map[string]string{
		sandbox.AnnotationContainerType: "container", sandbox.AnnotationSandboxID: "pod",
	}, cf)
	if _, err := e.svc.Start(ctx, &taskAPI.StartRequest{ID: "app"}); err != nil {
		t.Fatal(err)
	}
	if got := e.wait("app", ""); got != 0 {
		t.Errorf("app exit: got %d, want 0", got)
	}
	// A container of another pod does not belong in this shim.
	_, err := e.svc.Create(ctx, &taskAPI.CreateTaskRequest{ID: "other", Bundle: e.bundle("other", []string{"/bin/true"}, map[string]string{
		sandbox.AnnotationContainerType: "container", sandbox.AnnotationSandboxID: "pod2",
	})})
	if err == nil {
		t.Error("create in another pod's shim: got no error, want one")
	}
	if got, want := len(e.l.Agent("pod").Requests()), 0; got == want {
		t.Fatal("agent saw no requests")
	}
	var creates int
	for _, r := range e.l.Agent("pod").Requests() {
		if r.Method == "CreateContainer" {
			creates++
		}
	}
	if got, want := creates, 2; got != want {
		t.Errorf("CreateContainer calls in the pod's one sandbox: got %d, want %d", got, want)
	}
	if _, err := e.svc.Delete(ctx, &taskAPI.DeleteRequest{ID: "app"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Kill(ctx, &taskAPI.KillRequest{ID: "pod", Signal: 9, All: true}); err != nil {
		t.Fatal(err)
	}
	e.wait("pod", "")
	if _, err := e.svc.Delete(ctx, &taskAPI.DeleteRequest{ID: "pod"}); err != nil {
		t.Fatal(err)
	}
	cf.done.Wait()
	if got, want := cf.out.String(), "app\n"; got != want {
		t.Errorf("app stdout: got %q, want %q", got, want)
	}
}

func TestBadRequests(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	tests := []struct {
		name string
		call func() error
		is   func(error) bool
	}{
		{"traversal id", func() error {
			_, err := e.svc.Create(ctx, &taskAPI.CreateTaskRequest{ID: "../x", Bundle: e.dir})
			return err
		}, errdefs.IsInvalidArgument},
		{"relative bundle", func() error {
			_, err := e.svc.Create(ctx, &taskAPI.CreateTaskRequest{ID: "x", Bundle: "b"})
			return err
		}, errdefs.IsInvalidArgument},
		{"container before its sandbox", func() error {
			_, err := e.svc.Create(ctx, &taskAPI.CreateTaskRequest{ID: "x", Bundle: e.bundle("x", []string{"/bin/true"}, map[string]string{
				sandbox.AnnotationContainerType: "container", sandbox.AnnotationSandboxID: "pod",
			})})
			return err
		}, errdefs.IsFailedPrecondition},
		{"unknown container", func() error {
			_, err := e.svc.Start(ctx, &taskAPI.StartRequest{ID: "nope"})
			return err
		}, errdefs.IsNotFound},
		{"checkpoint", func() error {
			_, err := e.svc.Checkpoint(ctx, &taskAPI.CheckpointTaskRequest{ID: "x"})
			return err
		}, errdefs.IsNotImplemented},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			if !tt.is(errdefsFrom(err)) {
				t.Errorf("got %v, want a different error class", err)
			}
		})
	}
}

func TestWaitHonoursContext(t *testing.T) {
	shimtest.RequireRoot(t)
	e := newEnv(t)
	f := e.fifos("c1", false)
	e.create("c1", []string{"/bin/sh", "-c", "exec sleep 1000"}, nil, f)
	// The context is cancelled while Wait blocks on a task that never
	// starts; Wait must return rather than block forever.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	time.AfterFunc(50*time.Millisecond, cancel)
	if _, err := e.svc.Wait(ctx, &taskAPI.WaitRequest{ID: "c1"}); err == nil {
		t.Error("wait on a created task with an ending context: got no error, want one")
	}
	_ = protobuf.ToTimestamp
}
