package sandbox_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/cocoon-containers/cocoon/agent/policy"
	"github.com/cocoon-containers/cocoon/rpc/agentpb"
	"github.com/cocoon-containers/cocoon/shim/config"
	"github.com/cocoon-containers/cocoon/shim/sandbox"
	"github.com/cocoon-containers/cocoon/shim/shimtest"
	"google.golang.org/protobuf/proto"
)

// kataShapes is a policy in the style genpolicy generates: it pins the
// shapes the Kata runtime gives a pod's requests (shared directory and shm
// storages, rootfs under the shared containers directory, the CRI
// annotations, no hooks, no host namespace paths). The shim must produce
// requests it accepts.
const kataShapes = `package agent_policy

import rego.v1

default CreateSandboxRequest := false
default CreateContainerRequest := false

policy_data := {
	"shared_dir": "/run/kata-containers/shared/containers/",
	"shm": "/run/kata-containers/sandbox/shm",
	"sandbox_id": "pod1",
	"containers": {"pause": "sandbox", "app": "container"},
}

CreateSandboxRequest if {
	input.sandbox_id == policy_data.sandbox_id
	some s in input.storages
	s.driver == "9p"
	s.source == "kataShared"
	s.fstype == "9p"
	s.mount_point == policy_data.shared_dir
	some m in input.storages
	m.driver == "ephemeral"
	m.mount_point == policy_data.shm
	count(input.storages) == 2
}

CreateContainerRequest if {
	id := input.container_id
	input.exec_id == id
	input.OCI.Root.Path == concat("", [policy_data.shared_dir, id, "/rootfs"])
	input.OCI.Annotations["io.kubernetes.cri.container-type"] == policy_data.containers[id]
	input.OCI.Annotations["io.kubernetes.cri.sandbox-id"] == policy_data.sandbox_id
	no_hooks
	every ns in input.OCI.Linux.Namespaces {
		ns.Path == ""
	}
	every m in input.OCI.Mounts {
		mount_ok(m)
	}
}

no_hooks if input.OCI.Hooks == null

no_hooks if {
	count(input.OCI.Hooks.Prestart) + count(input.OCI.Hooks.Poststart) + count(input.OCI.Hooks.CreateRuntime) == 0
}

mount_ok(m) if m.type_ != "bind"

mount_ok(m) if {
	m.type_ == "bind"
	startswith(m.source, policy_data.shared_dir)
}
`

// TestRequestsHaveKataShapes records the requests the shim sends for a
// two-container pod sharing a 9p directory and checks them against a
// genpolicy-style policy that pins the Kata runtime's shapes.
func TestRequestsHaveKataShapes(t *testing.T) {
	shimtest.RequireRoot(t)
	ctx := context.Background()
	polFile := filepath.Join(t.TempDir(), "kata.rego")
	if err := os.WriteFile(polFile, []byte(kataShapes), 0o644); err != nil {
		t.Fatal(err)
	}
	enf, err := policy.NewEnforcer(ctx, policy.Options{DefaultPolicyPath: polFile})
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := enf.Loaded(); !ok {
		t.Fatal("the pinning policy did not load")
	}
	cfg, err := config.Parse([]byte("[sandbox]\nlauncher = \"qemu\"\nshared_fs = \"9p\"\nstate_dir = \"" + t.TempDir() + "\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	l := &shimtest.Launcher{}
	pauseRoot, appRoot := t.TempDir(), t.TempDir()
	sb, err := sandbox.Start(ctx, sandbox.Options{ID: "pod1", Config: cfg, Launcher: l, Hostname: "pod1",
		ContainerID: "pause", Rootfs: pauseRoot,
		Annotations: map[string]string{sandbox.AnnotationContainerType: "sandbox", sandbox.AnnotationSandboxID: "pod1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Stop(ctx)

	var reqs []proto.Message
	for _, r := range l.Agent("pod1").Requests() {
		if r.Method == "CreateSandbox" {
			reqs = append(reqs, r.Msg)
		}
	}
	for id, kind := range map[string]string{"pause": "sandbox", "app": "container"} {
		spec := testSpec("rootfs")
		spec.Annotations = map[string]string{sandbox.AnnotationContainerType: kind, sandbox.AnnotationSandboxID: "pod1"}
		root := pauseRoot
		if id == "app" {
			root = appRoot
		}
		req, err := sb.ContainerRequest(ctx, id, root, spec)
		if err != nil {
			t.Fatal(err)
		}
		reqs = append(reqs, req)
	}
	if len(reqs) != 3 {
		t.Fatalf("recorded %d requests, want CreateSandbox and two CreateContainer", len(reqs))
	}
	check := func(m proto.Message) *policy.Decision {
		t.Helper()
		in, err := policy.Encode(m)
		if err != nil {
			t.Fatal(err)
		}
		d, err := enf.Evaluate(ctx, string(m.ProtoReflect().Descriptor().Name()), in)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	for _, m := range reqs {
		if d := check(m); !d.Allowed {
			t.Errorf("%s refused by the Kata-shaped policy (failing: %v): %v", d.Entry, d.FailingRules, m)
		}
	}
	// The policy is not a rubber stamp: a rootfs elsewhere is refused.
	bad := proto.Clone(reqs[2]).(*agentpb.CreateContainerRequest)
	bad.OCI.Root.Path = "/run/elsewhere/rootfs"
	if d := check(bad); d.Allowed {
		t.Error("a moved rootfs passed the pinning policy")
	}
}
