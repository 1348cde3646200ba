package server_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cocoon-containers/cocoon/agent/agenttest"
	// Container processes start as "<this test binary> init".
	_ "github.com/cocoon-containers/cocoon/agent/container/reexec"
	"github.com/cocoon-containers/cocoon/agent/server"
	"github.com/cocoon-containers/cocoon/rpc/agentpb"
)

func TestMain(m *testing.M) {
	os.Exit(m.Run())
}

var harnessSeq atomic.Int32

type harness struct {
	t      testing.TB
	srv    *server.Server
	agent  agentpb.AgentServiceService
	health agentpb.HealthService
	shared string
	runDir string
	cgroup string
	conn   *ttrpc.Client
	served chan error
}

// newHarness starts an in-process agent on a unix socket and connects the
// generated client to it. Everything it creates is removed at cleanup.
func newHarness(t testing.TB, mod func(*server.Options)) *harness {
	t.Helper()
	sockDir, err := os.MkdirTemp("", "cocoon-agent-")
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{
		t:      t,
		shared: t.TempDir(),
		runDir: filepath.Join(t.TempDir(), "run"),
		cgroup: fmt.Sprintf("/cocoon-test-%d-%d", os.Getpid(), harnessSeq.Add(1)),
		served: make(chan error, 1),
	}
	opts := server.Options{
		RunDir:       h.runDir,
		CgroupParent: h.cgroup,
		Version:      "test",
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	if mod != nil {
		mod(&opts)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	h.srv = srv
	sock := filepath.Join(sockDir, "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go func() { h.served <- srv.Serve(ctx, l) }()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	h.conn = ttrpc.NewClient(conn)
	h.agent = agentpb.NewAgentServiceClient(h.conn)
	h.health = agentpb.NewHealthClient(h.conn)
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer ccancel()
		if err := srv.Cleanup(cctx); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		h.conn.Close()
		cancel()
		if err := <-h.served; err != nil {
			t.Errorf("serve: %v", err)
		}
		os.RemoveAll(sockDir)
		removeCgroupParent(t, h.cgroup)
	})
	return h
}

// removeCgroupParent removes the test's cgroup parent in every hierarchy and
// fails if a container cgroup was left behind.
func removeCgroupParent(t testing.TB, parent string) {
	t.Helper()
	for _, d := range cgroupDirs(parent) {
		ents, err := os.ReadDir(d)
		if err != nil {
			continue
		}
		for _, e := range ents {
			if e.IsDir() {
				t.Errorf("leaked cgroup %s", filepath.Join(d, e.Name()))
			}
		}
		if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Errorf("remove cgroup %s: %v", d, err)
		}
	}
}

// cgroupDirs lists where parent exists in the mounted cgroup hierarchies.
func cgroupDirs(parent string) []string {
	var out []string
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		return []string{filepath.Join("/sys/fs/cgroup", parent)}
	}
	ents, _ := os.ReadDir("/sys/fs/cgroup")
	for _, e := range ents {
		d := filepath.Join("/sys/fs/cgroup", e.Name(), parent)
		if _, err := os.Stat(d); err == nil {
			out = append(out, d)
		}
	}
	return out
}

func (h *harness) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	h.t.Cleanup(cancel)
	return ctx
}

func (h *harness) sandbox() {
	h.t.Helper()
	if _, err := h.agent.CreateSandbox(h.ctx(), &agentpb.CreateSandboxRequest{Hostname: "pod", SandboxId: "sb1"}); err != nil {
		h.t.Fatalf("CreateSandbox: %v", err)
	}
}

// create creates (not starts) a busybox container running args.
func (h *harness) create(id string, args ...string) *agentpb.Spec {
	h.t.Helper()
	spec := agenttest.Spec(agenttest.BusyboxRootfs(h.t, h.shared, id), args...)
	h.createSpec(id, spec)
	return spec
}

func (h *harness) createSpec(id string, spec *agentpb.Spec) {
	h.t.Helper()
	if _, err := h.agent.CreateContainer(h.ctx(), &agentpb.CreateContainerRequest{ContainerId: id, ExecId: id, OCI: spec}); err != nil {
		h.t.Fatalf("CreateContainer %s: %v", id, err)
	}
}

func (h *harness) start(id string) {
	h.t.Helper()
	if _, err := h.agent.StartContainer(h.ctx(), &agentpb.StartContainerRequest{ContainerId: id}); err != nil {
		h.t.Fatalf("StartContainer %s: %v", id, err)
	}
}

func (h *harness) wait(id, execID string) int32 {
	h.t.Helper()
	resp, err := h.agent.WaitProcess(h.ctx(), &agentpb.WaitProcessRequest{ContainerId: id, ExecId: execID})
	if err != nil {
		h.t.Fatalf("WaitProcess %s/%s: %v", id, execID, err)
	}
	return resp.Status
}

func (h *harness) remove(id string) {
	h.t.Helper()
	if _, err := h.agent.RemoveContainer(h.ctx(), &agentpb.RemoveContainerRequest{ContainerId: id}); err != nil {
		h.t.Fatalf("RemoveContainer %s: %v", id, err)
	}
}

// readAll reads a stream until EOF (empty data).
func (h *harness) readAll(id, execID string, stderr bool) string {
	h.t.Helper()
	var b strings.Builder
	for {
		req := &agentpb.ReadStreamRequest{ContainerId: id, ExecId: execID, Len: 64 << 10}
		var (
			resp *agentpb.ReadStreamResponse
			err  error
		)
		if stderr {
			resp, err = h.agent.ReadStderr(h.ctx(), req)
		} else {
			resp, err = h.agent.ReadStdout(h.ctx(), req)
		}
		if err != nil {
			h.t.Fatalf("read %s/%s: %v", id, execID, err)
		}
		if len(resp.Data) == 0 {
			return b.String()
		}
		b.Write(resp.Data)
	}
}

func code(err error) codes.Code {
	return status.Code(err)
}
