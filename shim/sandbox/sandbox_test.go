package sandbox_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cocoon-containers/cocoon/rpc/agentpb"
	"github.com/cocoon-containers/cocoon/shim/config"
	"github.com/cocoon-containers/cocoon/shim/sandbox"
	"github.com/cocoon-containers/cocoon/shim/shimtest"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func testConfig(t *testing.T, launcher string) config.Config {
	t.Helper()
	c, err := config.Parse([]byte("[sandbox]\nlauncher = \"" + launcher + "\"\nstate_dir = \"" + t.TempDir() + "\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func methods(reqs []shimtest.Request) []string {
	var out []string
	for _, r := range reqs {
		out = append(out, r.Method)
	}
	return out
}

func TestStartBootOrder(t *testing.T) {
	policy := "package agent_policy\ndefault ExecProcessRequest := false\n"
	gzDoc := func(doc string) string {
		var b bytes.Buffer
		zw := gzip.NewWriter(&b)
		zw.Write([]byte(doc))
		zw.Close()
		return base64.StdEncoding.EncodeToString(b.Bytes())
	}
	initdata := "version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n\"policy.rego\" = '''\npackage agent_policy\n'''\n"
	sum384 := sha512.Sum384([]byte(initdata))
	var initHostData [32]byte
	copy(initHostData[:], sum384[:])
	tests := []struct {
		name         string
		annotations  map[string]string
		wantMethods  []string
		wantHostData [32]byte
		wantPolicy   string
		wantErr      bool
	}{
		{
			name:        "no policy",
			wantMethods: []string{"CreateSandbox"},
		},
		{
			name:         "policy annotation",
			annotations:  map[string]string{sandbox.AnnotationPolicy: base64.StdEncoding.EncodeToString([]byte(policy))},
			wantMethods:  []string{"SetPolicy", "CreateSandbox"},
			wantHostData: sha256.Sum256([]byte(policy)),
			wantPolicy:   policy,
		},
		{
			name:         "initdata annotation",
			annotations:  map[string]string{sandbox.AnnotationInitdata: gzDoc(initdata)},
			wantMethods:  []string{"SetPolicy", "CreateSandbox"},
			wantHostData: initHostData,
			wantPolicy:   initdata,
		},
		{name: "bad base64", annotations: map[string]string{sandbox.AnnotationPolicy: "!!"}, wantErr: true},
		{name: "initdata not gzip", annotations: map[string]string{sandbox.AnnotationInitdata: base64.StdEncoding.EncodeToString([]byte("x"))}, wantErr: true},
		{name: "initdata bad algorithm", annotations: map[string]string{sandbox.AnnotationInitdata: gzDoc("version = \"0.1.0\"\nalgorithm = \"md5\"\n")}, wantErr: true},
		{
			name: "both",
			annotations: map[string]string{
				sandbox.AnnotationPolicy:   base64.StdEncoding.EncodeToString([]byte(policy)),
				sandbox.AnnotationInitdata: gzDoc(initdata),
			},
			wantErr: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			l := &shimtest.Launcher{}
			cfg := testConfig(t, "process")
			sb, err := sandbox.Start(ctx, sandbox.Options{ID: "pod1", Config: cfg, Launcher: l, Annotations: tt.annotations, Hostname: "pod1"})
			if tt.wantErr {
				if err == nil {
					sb.Stop(ctx)
					t.Fatal("got no error, want one")
				}
				if _, err := os.Stat(sandbox.StateDir(cfg, "pod1")); !os.IsNotExist(err) {
					t.Errorf("state dir after a failed start: got %v, want it removed", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			a := l.Agent("pod1")
			if got, want := strings.Join(methods(a.Requests()), ","), strings.Join(tt.wantMethods, ","); got != want {
				t.Errorf("requests: got %s, want %s", got, want)
			}
			if got, want := l.Spec("pod1").HostData, tt.wantHostData; got != want {
				t.Errorf("host data: got %x, want %x", got, want)
			}
			if got, want := a.Policy(), tt.wantPolicy; got != want {
				t.Errorf("policy: got %q, want %q", got, want)
			}
			cs := a.Requests()[len(a.Requests())-1].Msg.(*agentpb.CreateSandboxRequest)
			if got, want := cs.SandboxId, "pod1"; got != want {
				t.Errorf("sandbox id: got %q, want %q", got, want)
			}
			if err := sb.Stop(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(sandbox.StateDir(cfg, "pod1")); !os.IsNotExist(err) {
				t.Errorf("state dir after stop: got %v, want it removed", err)
			}
		})
	}
}

func TestRoleOf(t *testing.T) {
	tests := []struct {
		name    string
		ann     map[string]string
		want    sandbox.Role
		wantErr bool
	}{
		{name: "ctr", want: sandbox.Role{SandboxID: "c1", IsSandbox: true}},
		{name: "sandbox", ann: map[string]string{sandbox.AnnotationContainerType: "sandbox", sandbox.AnnotationSandboxID: "c1"}, want: sandbox.Role{SandboxID: "c1", IsSandbox: true}},
		{name: "container", ann: map[string]string{sandbox.AnnotationContainerType: "container", sandbox.AnnotationSandboxID: "pod"}, want: sandbox.Role{SandboxID: "pod"}},
		{name: "container without sandbox", ann: map[string]string{sandbox.AnnotationContainerType: "container"}, wantErr: true},
		{name: "traversal sandbox id", ann: map[string]string{sandbox.AnnotationContainerType: "container", sandbox.AnnotationSandboxID: "../x"}, wantErr: true},
		{name: "unknown type", ann: map[string]string{sandbox.AnnotationContainerType: "vm"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := sandbox.RoleOf("c1", tt.ann)
			if (err != nil) != tt.wantErr {
				t.Fatalf("got error %v, want error %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func testSpec(rootfs string, mounts ...specs.Mount) *specs.Spec {
	return &specs.Spec{
		Version:  "1.1.0",
		Process:  &specs.Process{Args: []string{"/bin/true"}, Cwd: "/", Env: []string{"PATH=/bin"}},
		Root:     &specs.Root{Path: rootfs},
		Hostname: "h",
		Mounts:   append([]specs.Mount{{Destination: "/proc", Type: "proc", Source: "proc"}}, mounts...),
		Hooks:    &specs.Hooks{Poststart: []specs.Hook{{Path: "/bin/hook"}}},
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.NetworkNamespace, Path: "/proc/1/ns/net"}, {Type: specs.MountNamespace}},
			Resources:  &specs.LinuxResources{CPU: &specs.LinuxCPU{Cpus: "0-1"}, Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}}},
		},
		Annotations: map[string]string{sandbox.AnnotationContainerType: "container"},
	}
}

func TestContainerRequestProcessMode(t *testing.T) {
	shimtest.RequireRoot(t)
	ctx := context.Background()
	l := &shimtest.Launcher{}
	rootfs := t.TempDir()
	os.WriteFile(filepath.Join(rootfs, "marker"), []byte("x"), 0o644)
	sb, err := sandbox.Start(ctx, sandbox.Options{ID: "pod2", Config: testConfig(t, "process"), Launcher: l, ContainerID: "c1", Rootfs: rootfs})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Stop(ctx)
	shared := l.Spec("pod2").SharedDir
	if _, err := os.Stat(filepath.Join(shared, "c1", "rootfs", "marker")); err != nil {
		t.Errorf("rootfs shared before launch: %v", err)
	}
	if got, want := len(l.Agent("pod2").Requests()[0].Msg.(*agentpb.CreateSandboxRequest).Storages), 1; got != want {
		t.Errorf("sandbox storages of a process sandbox: got %d, want %d (shm only)", got, want)
	}
	hosts := filepath.Join(t.TempDir(), "hosts")
	os.WriteFile(hosts, []byte("127.0.0.1 localhost\n"), 0o644)
	req, err := sb.ContainerRequest(ctx, "c1", rootfs, testSpec("rootfs", specs.Mount{Destination: "/etc/hosts", Source: hosts, Type: "bind", Options: []string{"rbind", "ro"}}))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := req.OCI.Root.Path, "/run/cocoon-shared/kataShared/c1/rootfs"; got != want {
		t.Errorf("root path: got %q, want %q", got, want)
	}
	if got, want := req.ExecId, "c1"; got != want {
		t.Errorf("exec id: got %q, want %q", got, want)
	}
	if got := req.OCI.Mounts[1].Source; !strings.HasPrefix(got, "/run/cocoon-shared/kataShared/c1-") {
		t.Errorf("bind source: got %q, want a copy in the shared dir", got)
	}
	if req.OCI.Hooks != nil {
		t.Errorf("hooks: got %v, want none", req.OCI.Hooks)
	}
	var ns []string
	for _, n := range req.OCI.Linux.Namespaces {
		ns = append(ns, n.Type+":"+n.Path)
	}
	if got, want := strings.Join(ns, ","), "pid:,mount:"; got != want {
		t.Errorf("namespaces: got %s, want %s", got, want)
	}
	if got := req.OCI.Linux.Resources; got.CPU.Cpus != "" || got.Devices != nil {
		t.Errorf("resources: got cpus %q devices %v, want both cleared", got.CPU.Cpus, got.Devices)
	}
	if got, want := req.OCI.Annotations[sandbox.AnnotationContainerType], "container"; got != want {
		t.Errorf("annotation passed through: got %q, want %q", got, want)
	}
	for _, bad := range []string{"", "../x", "a/b"} {
		if _, err := sb.ContainerRequest(ctx, bad, rootfs, testSpec("rootfs")); err == nil {
			t.Errorf("container id %q: got no error, want one", bad)
		}
	}
}

func TestContainerRequestSharedDir(t *testing.T) {
	shimtest.RequireRoot(t)
	ctx := context.Background()
	l := &shimtest.Launcher{}
	cfg := testConfig(t, "qemu")
	sb, err := sandbox.Start(ctx, sandbox.Options{ID: "pod3", Config: cfg, Launcher: l})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Stop(ctx)
	shared := l.Spec("pod3").SharedDir
	if shared == "" {
		t.Fatal("shared dir: got none, want one for a 9p sandbox")
	}
	cs := l.Agent("pod3").Requests()[0].Msg.(*agentpb.CreateSandboxRequest)
	if got, want := len(cs.Storages), 2; got != want {
		t.Fatalf("sandbox storages: got %d, want %d", got, want)
	}
	if got, want := cs.Storages[0].Driver+" "+cs.Storages[0].Source+" "+cs.Storages[0].MountPoint, "9p kataShared "+sandbox.GuestSharedDir; got != want {
		t.Errorf("shared storage: got %q, want %q", got, want)
	}
	if got, want := cs.Storages[1].MountPoint, sandbox.GuestShmDir; got != want {
		t.Errorf("shm storage: got %q, want %q", got, want)
	}
	rootfs := t.TempDir()
	os.WriteFile(filepath.Join(rootfs, "marker"), []byte("x"), 0o644)
	hosts := filepath.Join(t.TempDir(), "hosts")
	os.WriteFile(hosts, []byte("127.0.0.1 localhost\n"), 0o644)
	req, err := sb.ContainerRequest(ctx, "c1", rootfs, testSpec("rootfs", specs.Mount{Destination: "/etc/hosts", Source: hosts, Type: "bind", Options: []string{"rbind", "ro"}}))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := req.OCI.Root.Path, sandbox.GuestSharedDir+"c1/rootfs"; got != want {
		t.Errorf("root path: got %q, want %q", got, want)
	}
	if _, err := os.Stat(filepath.Join(shared, "c1", "rootfs", "marker")); err != nil {
		t.Errorf("rootfs in the shared dir: %v", err)
	}
	src := req.OCI.Mounts[1].Source
	if !strings.HasPrefix(src, sandbox.GuestSharedDir+"c1-") || !strings.HasSuffix(src, "-hosts") {
		t.Errorf("hosts source: got %q, want %sc1-<random>-hosts", src, sandbox.GuestSharedDir)
	}
	got, err := os.ReadFile(filepath.Join(shared, strings.TrimPrefix(src, sandbox.GuestSharedDir)))
	if err != nil || string(got) != "127.0.0.1 localhost\n" {
		t.Errorf("hosts copy: got %q, %v, want the host file's content", got, err)
	}
	if err := sb.RemoveContainer("c1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(shared, "c1")); !os.IsNotExist(err) {
		t.Errorf("shared container dir after remove: got %v, want it gone", err)
	}
	if _, err := os.Stat(filepath.Join(rootfs, "marker")); err != nil {
		t.Errorf("host rootfs after remove: %v, want it untouched", err)
	}
}
