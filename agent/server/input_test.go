package server_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"

	"github.com/cocoon-containers/cocoon/agent/agenttest"
	"github.com/cocoon-containers/cocoon/agent/server"
	"github.com/cocoon-containers/cocoon/rpc/agentpb"
)

// TestBadInput sends hostile or out-of-order requests; each must fail with
// its own code and leave the agent serving.
func TestBadInput(t *testing.T) {
	agenttest.RequireRoot(t)
	h := newHarness(t, nil)
	rootfs := agenttest.BusyboxRootfs(t, h.shared, "good")
	spec := func(mod func(*agentpb.Spec)) *agentpb.Spec {
		s := agenttest.Spec(rootfs, "true")
		if mod != nil {
			mod(s)
		}
		return s
	}
	create := func(id string, s *agentpb.Spec) error {
		_, err := h.agent.CreateContainer(h.ctx(), &agentpb.CreateContainerRequest{ContainerId: id, OCI: s})
		return err
	}

	// Before CreateSandbox, containers are out of order.
	if err := create("early", spec(nil)); code(err) != codes.FailedPrecondition {
		t.Errorf("create before sandbox: got %v, want FailedPrecondition", err)
	}
	h.sandbox()
	if _, err := h.agent.CreateSandbox(h.ctx(), &agentpb.CreateSandboxRequest{}); code(err) != codes.AlreadyExists {
		t.Errorf("second sandbox: got %v, want AlreadyExists", err)
	}

	tests := []struct {
		name string
		call func() error
		want codes.Code
	}{
		{"traversal id", func() error { return create("../../etc", spec(nil)) }, codes.InvalidArgument},
		{"slash id", func() error { return create("a/b", spec(nil)) }, codes.InvalidArgument},
		{"empty id", func() error { return create("", spec(nil)) }, codes.InvalidArgument},
		{"long id", func() error { return create(strings.Repeat("a", 129), spec(nil)) }, codes.InvalidArgument},
		{"no spec", func() error { return create("x", nil) }, codes.InvalidArgument},
		{"no process", func() error { return create("x", spec(func(s *agentpb.Spec) { s.Process = nil })) }, codes.InvalidArgument},
		{"no args", func() error { return create("x", spec(func(s *agentpb.Spec) { s.Process.Args = nil })) }, codes.InvalidArgument},
		{"relative root", func() error { return create("x", spec(func(s *agentpb.Spec) { s.Root.Path = "rootfs" })) }, codes.InvalidArgument},
		{"unclean root", func() error {
			return create("x", spec(func(s *agentpb.Spec) { s.Root.Path = rootfs + "/../../.." }))
		}, codes.InvalidArgument},
		{"missing root", func() error { return create("x", spec(func(s *agentpb.Spec) { s.Root.Path = "/nonexistent/rootfs" })) }, codes.InvalidArgument},
		{"hooks", func() error {
			return create("x", spec(func(s *agentpb.Spec) {
				s.Hooks = &agentpb.Hooks{Prestart: []*agentpb.Hook{{Path: "/bin/sh"}}}
			}))
		}, codes.InvalidArgument},
		{"bad namespace", func() error {
			return create("x", spec(func(s *agentpb.Spec) {
				s.Linux.Namespaces = append(s.Linux.Namespaces, &agentpb.LinuxNamespace{Type: "bogus"})
			}))
		}, codes.InvalidArgument},
		{"relative mount", func() error {
			return create("x", spec(func(s *agentpb.Spec) { s.Mounts = append(s.Mounts, &agentpb.Mount{Destination: "etc", Type: "tmpfs"}) }))
		}, codes.InvalidArgument},
		{"oom score", func() error { return create("x", spec(func(s *agentpb.Spec) { s.Process.OOMScoreAdj = 5000 })) }, codes.InvalidArgument},
		{"exec id mismatch", func() error {
			_, err := h.agent.CreateContainer(h.ctx(), &agentpb.CreateContainerRequest{ContainerId: "x", ExecId: "y", OCI: spec(nil)})
			return err
		}, codes.InvalidArgument},
		{"storages without handler", func() error {
			_, err := h.agent.CreateContainer(h.ctx(), &agentpb.CreateContainerRequest{ContainerId: "x", OCI: spec(nil), Storages: []*agentpb.Storage{{Driver: "local"}}})
			return err
		}, codes.FailedPrecondition},
		{"unknown user", func() error {
			_, err := h.agent.CreateContainer(h.ctx(), &agentpb.CreateContainerRequest{ContainerId: "x", OCI: spec(nil), StringUser: &agentpb.StringUser{Uid: "nosuchuser"}})
			return err
		}, codes.InvalidArgument},
		{"user name with a colon", func() error {
			_, err := h.agent.CreateContainer(h.ctx(), &agentpb.CreateContainerRequest{ContainerId: "x", OCI: spec(nil), StringUser: &agentpb.StringUser{Uid: "root:0"}})
			return err
		}, codes.InvalidArgument},
		{"non-numeric gid", func() error {
			_, err := h.agent.CreateContainer(h.ctx(), &agentpb.CreateContainerRequest{ContainerId: "x", OCI: spec(nil), StringUser: &agentpb.StringUser{Gid: "wheel"}})
			return err
		}, codes.InvalidArgument},
		{"start unknown", func() error {
			_, err := h.agent.StartContainer(h.ctx(), &agentpb.StartContainerRequest{ContainerId: "nope"})
			return err
		}, codes.NotFound},
		{"wait unknown exec", func() error {
			_, err := h.agent.WaitProcess(h.ctx(), &agentpb.WaitProcessRequest{ContainerId: "good", ExecId: "nope"})
			return err
		}, codes.NotFound},
		{"read traversal exec", func() error {
			_, err := h.agent.ReadStdout(h.ctx(), &agentpb.ReadStreamRequest{ContainerId: "good", ExecId: "../x", Len: 10})
			return err
		}, codes.InvalidArgument},
		{"read too much", func() error {
			_, err := h.agent.ReadStdout(h.ctx(), &agentpb.ReadStreamRequest{ContainerId: "good", Len: 1<<20 + 1})
			return err
		}, codes.InvalidArgument},
		{"read nothing", func() error {
			_, err := h.agent.ReadStderr(h.ctx(), &agentpb.ReadStreamRequest{ContainerId: "good", Len: 0})
			return err
		}, codes.InvalidArgument},
		{"write too much", func() error {
			_, err := h.agent.WriteStdin(h.ctx(), &agentpb.WriteStreamRequest{ContainerId: "good", Data: make([]byte, 1<<20+1)})
			return err
		}, codes.InvalidArgument},
		{"signal zero", func() error {
			_, err := h.agent.SignalProcess(h.ctx(), &agentpb.SignalProcessRequest{ContainerId: "good", Signal: 0})
			return err
		}, codes.InvalidArgument},
		{"signal huge", func() error {
			_, err := h.agent.SignalProcess(h.ctx(), &agentpb.SignalProcessRequest{ContainerId: "good", Signal: 1000})
			return err
		}, codes.InvalidArgument},
		{"exec before start", func() error {
			_, err := h.agent.ExecProcess(h.ctx(), &agentpb.ExecProcessRequest{ContainerId: "good", ExecId: "e", Process: &agentpb.Process{Args: []string{"true"}, User: &agentpb.User{}}})
			return err
		}, codes.FailedPrecondition},
		{"exec with container id", func() error {
			_, err := h.agent.ExecProcess(h.ctx(), &agentpb.ExecProcessRequest{ContainerId: "good", ExecId: "good", Process: &agentpb.Process{Args: []string{"true"}}})
			return err
		}, codes.AlreadyExists},
		{"exec without process", func() error {
			_, err := h.agent.ExecProcess(h.ctx(), &agentpb.ExecProcessRequest{ContainerId: "good", ExecId: "e"})
			return err
		}, codes.InvalidArgument},
		{"resize huge", func() error {
			_, err := h.agent.TtyWinResize(h.ctx(), &agentpb.TtyWinResizeRequest{ContainerId: "good", Row: 1 << 20, Column: 1})
			return err
		}, codes.InvalidArgument},
		{"resume not paused", func() error {
			_, err := h.agent.ResumeContainer(h.ctx(), &agentpb.ResumeContainerRequest{ContainerId: "good"})
			return err
		}, codes.FailedPrecondition},
		{"update without resources", func() error {
			_, err := h.agent.UpdateContainer(h.ctx(), &agentpb.UpdateContainerRequest{ContainerId: "good"})
			return err
		}, codes.InvalidArgument},
		{"bad hostname", func() error {
			_, err := h.agent.CreateSandbox(h.ctx(), &agentpb.CreateSandboxRequest{Hostname: "a b\n"})
			return err
		}, codes.InvalidArgument},
		{"sandbox pidns", func() error {
			_, err := h.agent.CreateContainer(h.ctx(), &agentpb.CreateContainerRequest{ContainerId: "x", OCI: spec(nil), SandboxPidns: true})
			return err
		}, codes.InvalidArgument},
		{"kernel modules", func() error {
			_, err := h.agent.CreateSandbox(h.ctx(), &agentpb.CreateSandboxRequest{KernelModules: []*agentpb.KernelModule{{Name: "evil"}}})
			return err
		}, codes.InvalidArgument},
		{"set time on a host", func() error {
			_, err := h.agent.SetGuestDateTime(h.ctx(), &agentpb.SetGuestDateTimeRequest{Sec: 1})
			return err
		}, codes.FailedPrecondition},
		{"online cpus on a host", func() error {
			_, err := h.agent.OnlineCPUMem(h.ctx(), &agentpb.OnlineCPUMemRequest{NbCpus: 1})
			return err
		}, codes.FailedPrecondition},
		{"reseed nothing", func() error {
			_, err := h.agent.ReseedRandomDev(h.ctx(), &agentpb.ReseedRandomDevRequest{})
			return err
		}, codes.InvalidArgument},
		{"no policy engine", func() error {
			_, err := h.agent.SetPolicy(h.ctx(), &agentpb.SetPolicyRequest{Policy: "package agent_policy"})
			return err
		}, codes.FailedPrecondition},
		{"no file copier", func() error {
			_, err := h.agent.CopyFile(h.ctx(), &agentpb.CopyFileRequest{Path: "/x"})
			return err
		}, codes.FailedPrecondition},
		{"no network", func() error {
			_, err := h.agent.ListInterfaces(h.ctx(), &agentpb.ListInterfacesRequest{})
			return err
		}, codes.FailedPrecondition},
		{"unimplemented", func() error {
			_, err := h.agent.AddSwap(h.ctx(), &agentpb.AddSwapRequest{})
			return err
		}, codes.Unimplemented},
	}
	h.createSpec("good", spec(nil))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			if got := code(err); got != tt.want {
				t.Errorf("got %v, want code %v", err, tt.want)
			}
			if err != nil && strings.ContainsAny(strings.TrimPrefix(err.Error(), "rpc error: code = "), "\x00") {
				t.Errorf("error text has a NUL: %q", err)
			}
		})
	}
	// Still serving, and the good container still works.
	if _, err := h.health.Check(h.ctx(), &agentpb.CheckRequest{}); err != nil {
		t.Fatalf("health after bad input: %v", err)
	}
	h.start("good")
	if _, err := h.agent.StartContainer(h.ctx(), &agentpb.StartContainerRequest{ContainerId: "good"}); code(err) != codes.FailedPrecondition {
		t.Errorf("second start: got %v, want FailedPrecondition", err)
	}
	if err := create("good", spec(nil)); code(err) != codes.AlreadyExists {
		t.Errorf("duplicate create: got %v, want AlreadyExists", err)
	}
	if got := h.wait("good", ""); got != 0 {
		t.Errorf("exit status: got %d, want 0", got)
	}
	if err := unimplementedMessage(h); err != nil {
		t.Error(err)
	}
}

func unimplementedMessage(h *harness) error {
	_, err := h.agent.GetIPTables(h.ctx(), &agentpb.GetIPTablesRequest{})
	if err == nil || !strings.Contains(err.Error(), "GetIPTables") {
		return errors.New("unimplemented error does not name the RPC: " + errString(err))
	}
	return nil
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

type panicky struct{}

func (panicky) SetPolicy(context.Context, *agentpb.SetPolicyRequest) error {
	var m map[string]int
	//lint:ignore SA5000 a deliberate nil-map panic exercises the recover interceptor
	m["boom"]++
	return nil
}

type refusing struct{}

func (refusing) CopyFile(context.Context, *agentpb.CopyFileRequest) error {
	return errdefs.ErrPermissionDenied
}

// TestRecoverAndDelegation checks the panic interceptor, the error-class
// conversion of delegated components, and the order of given interceptors.
func TestRecoverAndDelegation(t *testing.T) {
	h := newHarness(t, func(o *server.Options) {
		o.Policy = panicky{}
		o.Files = refusing{}
	})
	_, err := h.agent.SetPolicy(h.ctx(), &agentpb.SetPolicyRequest{Policy: "x"})
	if code(err) != codes.Internal {
		t.Errorf("panicking handler: got %v, want Internal", err)
	}
	_, err = h.agent.CopyFile(h.ctx(), &agentpb.CopyFileRequest{Path: "/x"})
	if code(err) != codes.PermissionDenied {
		t.Errorf("delegated error: got %v, want PermissionDenied", err)
	}
	v, err := h.health.Version(h.ctx(), &agentpb.CheckRequest{})
	if err != nil {
		t.Fatalf("Version after panic: %v", err)
	}
	if v.AgentVersion != "test" {
		t.Errorf("agent version: got %q, want %q", v.AgentVersion, "test")
	}
	hc, err := h.health.Check(h.ctx(), &agentpb.CheckRequest{})
	if err != nil || hc.Status != agentpb.HealthCheckResponse_SERVING {
		t.Errorf("Check: got %v, %v; want SERVING", hc, err)
	}
}
