package server_test

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/cocoon-containers/cocoon/agent/agenttest"
	"github.com/cocoon-containers/cocoon/rpc/agentpb"
)

func TestEchoAndExitCode(t *testing.T) {
	agenttest.RequireRoot(t)
	h := newHarness(t, nil)
	h.sandbox()
	h.create("echo", "sh", "-c", "echo hello; echo oops >&2; exit 3")
	h.start("echo")
	if got, want := h.readAll("echo", "", false), "hello\n"; got != want {
		t.Errorf("stdout: got %q, want %q", got, want)
	}
	if got, want := h.readAll("echo", "echo", true), "oops\n"; got != want {
		t.Errorf("stderr: got %q, want %q", got, want)
	}
	if got, want := h.wait("echo", ""), int32(3); got != want {
		t.Errorf("exit status: got %d, want %d", got, want)
	}
	h.remove("echo")
	if _, err := h.agent.StatsContainer(h.ctx(), &agentpb.StatsContainerRequest{ContainerId: "echo"}); code(err) != codes.NotFound {
		t.Errorf("stats after remove: got %v, want NotFound", err)
	}
}

func TestHostnameAndNamespaces(t *testing.T) {
	agenttest.RequireRoot(t)
	h := newHarness(t, nil)
	h.sandbox()
	h.create("ns", "sh", "-c", "hostname; echo $$")
	h.start("ns")
	out := h.readAll("ns", "", false)
	if got, want := out, "cocoon-test\n1\n"; got != want {
		t.Errorf("output: got %q, want %q (hostname, then pid 1 in its own pid namespace)", got, want)
	}
	if got := h.wait("ns", ""); got != 0 {
		t.Errorf("exit status: got %d, want 0", got)
	}
}

func TestOutputBeforeAnyRead(t *testing.T) {
	agenttest.RequireRoot(t)
	h := newHarness(t, nil)
	h.sandbox()
	h.create("early", "sh", "-c", "echo gone-before-read")
	h.start("early")
	// Collect the exit first, then read: the output must still be there.
	if got := h.wait("early", ""); got != 0 {
		t.Fatalf("exit status: got %d, want 0", got)
	}
	if got, want := h.readAll("early", "", false), "gone-before-read\n"; got != want {
		t.Errorf("stdout: got %q, want %q", got, want)
	}
}

func TestLargeOutput(t *testing.T) {
	agenttest.RequireRoot(t)
	h := newHarness(t, nil)
	h.sandbox()
	// 3 MiB: larger than the pipe buffer and than the agent's buffer.
	h.create("big", "sh", "-c", "head -c 3145728 /dev/zero | tr '\\0' x")
	h.start("big")
	out := h.readAll("big", "", false)
	if got, want := len(out), 3<<20; got != want {
		t.Fatalf("read %d bytes, want %d", got, want)
	}
	if strings.Trim(out, "x") != "" {
		t.Errorf("output has bytes other than x")
	}
	if got := h.wait("big", ""); got != 0 {
		t.Errorf("exit status: got %d, want 0", got)
	}
}
