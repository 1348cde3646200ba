package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/ttrpc"

	"github.com/cocoon-containers/cocoon/agent/agenttest"
	"github.com/cocoon-containers/cocoon/rootfs"
	"github.com/cocoon-containers/cocoon/rpc/agentpb"
)

const runMainEnv = "COCOON_AGENT_TEST_RUN_MAIN"

// TestMain lets the test binary act as the whole agent when the tests start
// it as a child (main.go's reexec import makes it "init" for containers).
func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

type agentProc struct {
	cmd    *exec.Cmd
	sock   string
	stderr *bytes.Buffer
	done   chan error
}

// startAgent runs this binary as the agent on a unix socket with a config
// file that keeps its bundles and cgroups under test-owned names.
func startAgent(t testing.TB, extraEnv ...string) *agentProc {
	t.Helper()
	dir, err := os.MkdirTemp("", "cocoon-main-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cgroup := fmt.Sprintf("/cocoon-main-test-%d", os.Getpid())
	conf := filepath.Join(dir, "agent.toml")
	allowAll := filepath.Join(dir, "allow-all.rego")
	if err := os.WriteFile(allowAll, rootfs.AllowAllPolicy(), 0o644); err != nil {
		t.Fatal(err)
	}
	body := fmt.Sprintf("run_dir = %q\ncgroup_parent = %q\nlog_level = \"debug\"\ndefault_policy = %q\n",
		filepath.Join(dir, "run"), cgroup, allowAll)
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "agent.sock")
	a := &agentProc{sock: sock, stderr: &bytes.Buffer{}, done: make(chan error, 1)}
	bin := os.Args[0]
	if b := os.Getenv("COCOON_AGENT_BIN"); b != "" {
		// The benchmark measures the production build when given one.
		bin = b
	}
	a.cmd = exec.Command(bin)
	a.cmd.Env = append(os.Environ(), runMainEnv+"=1", "COCOON_AGENT_CONFIG="+conf,
		"COCOON_AGENT_SERVER_ADDR=unix://"+sock, "KATA_AGENT_SERVER_ADDR=")
	a.cmd.Env = append(a.cmd.Env, extraEnv...)
	a.cmd.Stderr = a.stderr
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { a.done <- a.cmd.Wait() }()
	t.Cleanup(func() {
		if a.cmd.ProcessState == nil {
			a.cmd.Process.Kill()
			<-a.done
		}
		for _, d := range cgroupDirs(cgroup) {
			os.Remove(d)
		}
	})
	return a
}

func cgroupDirs(parent string) []string {
	var out []string
	ents, _ := os.ReadDir("/sys/fs/cgroup")
	for _, e := range ents {
		out = append(out, filepath.Join("/sys/fs/cgroup", e.Name(), parent))
	}
	return append(out, filepath.Join("/sys/fs/cgroup", parent))
}

func (a *agentProc) dial(t testing.TB) *ttrpc.Client {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		conn, err := net.Dial("unix", a.sock)
		if err == nil {
			c := ttrpc.NewClient(conn)
			t.Cleanup(func() { c.Close() })
			return c
		}
		select {
		case err := <-a.done:
			t.Fatalf("agent exited early: %v\n%s", err, a.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent did not listen on %s: %v\n%s", a.sock, err, a.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop sends SIGTERM and expects a clean exit that removes the socket.
func (a *agentProc) stop(t testing.TB) {
	t.Helper()
	a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-a.done:
		if err != nil {
			t.Errorf("agent exit: %v\n%s", err, a.stderr)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("agent did not exit after SIGTERM\n%s", a.stderr)
	}
	if _, err := os.Stat(a.sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}
}

func TestServeAndStop(t *testing.T) {
	a := startAgent(t)
	c := a.dial(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v, err := agentpb.NewHealthClient(c).Version(ctx, &agentpb.CheckRequest{})
	if err != nil {
		t.Fatalf("Version: %v", err)
	}
	if v.AgentVersion != version {
		t.Errorf("agent version: got %q, want %q", v.AgentVersion, version)
	}
	a.stop(t)
}

func TestBadConfigExits(t *testing.T) {
	a := startAgent(t, "COCOON_AGENT_SERVER_ADDR=tcp://0.0.0.0:1")
	select {
	case err := <-a.done:
		if err == nil {
			t.Fatalf("agent with a bad address exited 0")
		}
		if !strings.Contains(a.stderr.String(), "server_addr") {
			t.Errorf("error output does not name the bad key:\n%s", a.stderr)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("agent with a bad address kept running")
	}
}

func TestContainerThroughBinary(t *testing.T) {
	agenttest.RequireRoot(t)
	a := startAgent(t)
	c := agentpb.NewAgentServiceClient(a.dial(t))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := c.CreateSandbox(ctx, &agentpb.CreateSandboxRequest{SandboxId: "sb"}); err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	rootfs := agenttest.BusyboxRootfs(t, t.TempDir(), "bin")
	if _, err := c.CreateContainer(ctx, &agentpb.CreateContainerRequest{ContainerId: "bin", OCI: agenttest.Spec(rootfs, "echo", "from-binary")}); err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	if _, err := c.StartContainer(ctx, &agentpb.StartContainerRequest{ContainerId: "bin"}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
	out, err := c.ReadStdout(ctx, &agentpb.ReadStreamRequest{ContainerId: "bin", Len: 1024})
	if err != nil {
		t.Fatalf("ReadStdout: %v", err)
	}
	if got, want := string(out.Data), "from-binary\n"; got != want {
		t.Errorf("stdout: got %q, want %q", got, want)
	}
	// A container still running at shutdown is cleaned up by the agent.
	if _, err := c.CreateContainer(ctx, &agentpb.CreateContainerRequest{ContainerId: "left", OCI: agenttest.Spec(rootfs, "sleep", "1000")}); err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	a.stop(t)
	for _, d := range cgroupDirs(fmt.Sprintf("/cocoon-main-test-%d", os.Getpid())) {
		if ents, err := os.ReadDir(d); err == nil {
			for _, e := range ents {
				if e.IsDir() {
					t.Errorf("cgroup left after shutdown: %s", filepath.Join(d, e.Name()))
				}
			}
		}
	}
}

func TestSubcommands(t *testing.T) {
	tests := []struct {
		args     []string
		wantCode int
		wantErr  string
	}{
		{[]string{"bogus"}, 2, `unknown command "bogus"`},
		{[]string{"policy"}, 1, "usage: cocoon-agent policy eval"},
		{[]string{"policy", "eval", "--policy", "/nonexistent.rego", "--request", "/nonexistent.json"}, 1, "nonexistent"},
	}
	for _, tt := range tests {
		cmd := exec.Command(os.Args[0], tt.args...)
		cmd.Env = append(os.Environ(), runMainEnv+"=1")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != tt.wantCode {
			t.Errorf("%v: got %v, want exit code %d", tt.args, err, tt.wantCode)
		}
		if !strings.Contains(stderr.String(), tt.wantErr) {
			t.Errorf("%v: stderr %q lacks %q", tt.args, stderr.String(), tt.wantErr)
		}
	}
}
