package policy

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"github.com/open-policy-agent/opa/v1/ast"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/cocoon-containers/cocoon/rpc/agentpb"
	"github.com/cocoon-containers/cocoon/rpc/typespb"
)

var update = flag.Bool("update", false, "rewrite golden files")

func readPolicy(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// fixedHostData is a binding source with a settable HOST_DATA.
type fixedHostData struct {
	mu sync.Mutex
	hd []byte
}

func (f *fixedHostData) HostData(context.Context) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]byte(nil), f.hd...), nil
}

func enforcerWith(t testing.TB, policyFile string, binding HostDataSource) (*Enforcer, *bytes.Buffer) {
	t.Helper()
	var logs bytes.Buffer
	opts := Options{Binding: binding, Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	if policyFile != "" {
		opts.DefaultPolicyPath = filepath.Join("testdata", policyFile)
	}
	e, err := NewEnforcer(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	return e, &logs
}

// agentServer serves a generic AgentService (every method decodes its
// request and answers an empty response) and Health, gated by e.
func agentServer(t testing.TB, e *Enforcer) *ttrpc.Client {
	t.Helper()
	srv, err := ttrpc.NewServer(ttrpc.WithUnaryServerInterceptor(e.UnaryInterceptor()))
	if err != nil {
		t.Fatal(err)
	}
	methods := map[string]ttrpc.Method{}
	svc := agentpb.File_agent_proto.Services().ByName("AgentService")
	for i := 0; i < svc.Methods().Len(); i++ {
		m := svc.Methods().Get(i)
		in, out := newMessage(t, m.Input()), m.Output()
		methods[string(m.Name())] = func(ctx context.Context, unmarshal func(interface{}) error) (interface{}, error) {
			req := proto.Clone(in)
			if err := unmarshal(req); err != nil {
				return nil, err
			}
			if sp, ok := req.(*agentpb.SetPolicyRequest); ok {
				if err := e.SetPolicy(ctx, sp); err != nil {
					return nil, ToStatus(err)
				}
			}
			return newMessage(t, out), nil
		}
	}
	srv.RegisterService("grpc.AgentService", &ttrpc.ServiceDesc{Methods: methods})
	agentpb.RegisterHealthService(srv, healthOK{})
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(context.Background(), l)
	t.Cleanup(func() { srv.Close() })
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c := ttrpc.NewClient(conn)
	t.Cleanup(func() { c.Close() })
	return c
}

func newMessage(t testing.TB, d protoreflect.MessageDescriptor) proto.Message {
	mt, err := protoregistry.GlobalTypes.FindMessageByName(d.FullName())
	if err != nil {
		t.Fatal(err)
	}
	return mt.New().Interface()
}

type healthOK struct{}

func (healthOK) Check(context.Context, *agentpb.CheckRequest) (*agentpb.HealthCheckResponse, error) {
	return &agentpb.HealthCheckResponse{Status: agentpb.HealthCheckResponse_SERVING}, nil
}
func (healthOK) Version(context.Context, *agentpb.CheckRequest) (*agentpb.VersionCheckResponse, error) {
	return &agentpb.VersionCheckResponse{}, nil
}

func call(t testing.TB, c *ttrpc.Client, method string, req proto.Message) error {
	t.Helper()
	svc := agentpb.File_agent_proto.Services().ByName("AgentService")
	m := svc.Methods().ByName(protoreflect.Name(method))
	resp := newMessage(t, m.Output())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return c.Call(ctx, "grpc.AgentService", method, req, resp)
}

func TestEveryMethodIsGated(t *testing.T) {
	svc := agentpb.File_agent_proto.Services().ByName("AgentService")
	for _, tt := range []struct {
		policy string
		want   codes.Code
	}{{"deny-all.rego", codes.PermissionDenied}, {"allow-all.rego", codes.OK}} {
		t.Run(tt.policy, func(t *testing.T) {
			e, _ := enforcerWith(t, tt.policy, nil)
			c := agentServer(t, e)
			for i := 0; i < svc.Methods().Len(); i++ {
				m := svc.Methods().Get(i)
				req := newMessage(t, m.Input())
				if m.Name() == "SetPolicy" {
					req = &agentpb.SetPolicyRequest{Policy: readPolicy(t, tt.policy)}
				}
				err := call(t, c, string(m.Name()), req)
				if got := status.Code(err); got != tt.want {
					t.Errorf("%s: code %v (%v), want %v", m.Name(), got, err, tt.want)
				}
				if tt.want == codes.PermissionDenied && !strings.Contains(err.Error(), string(m.Input().Name())+" is blocked by policy") {
					t.Errorf("%s: message %q does not name the entry point", m.Name(), err)
				}
			}
			var resp agentpb.HealthCheckResponse
			if err := c.Call(context.Background(), "grpc.Health", "Check", &agentpb.CheckRequest{}, &resp); err != nil {
				t.Errorf("Health was gated: %v", err)
			}
		})
	}
}

func TestNoPolicyRefusesAllButSetPolicy(t *testing.T) {
	e, _ := enforcerWith(t, "missing.rego", nil)
	c := agentServer(t, e)
	if err := call(t, c, "CreateContainer", &agentpb.CreateContainerRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("CreateContainer without policy = %v, want PermissionDenied", err)
	}
	if err := call(t, c, "SetPolicy", &agentpb.SetPolicyRequest{Policy: readPolicy(t, "allow-all.rego")}); err != nil {
		t.Fatalf("SetPolicy without policy: %v", err)
	}
	if err := call(t, c, "CreateContainer", &agentpb.CreateContainerRequest{}); err != nil {
		t.Fatalf("CreateContainer after SetPolicy: %v", err)
	}
}

func TestDenyExec(t *testing.T) {
	e, logs := enforcerWith(t, "deny-exec.rego", nil)
	c := agentServer(t, e)
	if err := call(t, c, "CreateContainer", &agentpb.CreateContainerRequest{ContainerId: "a"}); err != nil {
		t.Fatal(err)
	}
	err := call(t, c, "ExecProcess", &agentpb.ExecProcessRequest{ContainerId: "a", ExecId: "e1"})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("ExecProcess = %v, want PermissionDenied", err)
	}
	if want := "ExecProcessRequest is blocked by policy: exec is not allowed in this pod"; !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q lacks %q", err, want)
	}
	if !strings.Contains(logs.String(), "request blocked by policy") {
		t.Fatalf("denial not logged: %s", logs.String())
	}
}

func createReq(id, image string, args ...string) *agentpb.CreateContainerRequest {
	return &agentpb.CreateContainerRequest{
		ContainerId: id,
		ExecId:      id,
		OCI: &agentpb.Spec{
			Version: "1.1.0",
			Process: &agentpb.Process{Args: args, Cwd: "/"},
			Root:    &agentpb.Root{Path: "/run/kata-containers/shared/containers/" + id + "/rootfs"},
			Annotations: map[string]string{
				"io.kubernetes.cri.image-name":     image,
				"io.kubernetes.cri.container-name": "web",
			},
		},
	}
}

func TestGenpolicyShaped(t *testing.T) {
	e, logs := enforcerWith(t, "genpolicy-shaped.rego", nil)
	c := agentServer(t, e)
	good := createReq("c1", "registry.local/busybox:latest", "/bin/sh", "-c", "echo hello")
	if err := call(t, c, "CreateContainer", good); err != nil {
		t.Fatalf("allowed create: %v", err)
	}
	// The state now knows c1: a second create of c1 is refused.
	if err := call(t, c, "CreateContainer", good); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("duplicate create = %v, want PermissionDenied", err)
	}
	if err := call(t, c, "ExecProcess", &agentpb.ExecProcessRequest{ContainerId: "c1", ExecId: "x"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("exec = %v, want PermissionDenied", err)
	}
	if err := call(t, c, "RemoveContainer", &agentpb.RemoveContainerRequest{ContainerId: "c1"}); err != nil {
		t.Fatalf("remove: %v", err)
	}
	if err := call(t, c, "RemoveContainer", &agentpb.RemoveContainerRequest{ContainerId: "c1"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("second remove = %v, want PermissionDenied (state cleared)", err)
	}
	logs.Reset()
	bad := createReq("c2", "evil/image", "/bin/sh", "-c", "echo hello")
	if err := call(t, c, "CreateContainer", bad); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("create of another image = %v, want PermissionDenied", err)
	}
	if !strings.Contains(logs.String(), "failing_rules=[image_allowed]") {
		t.Fatalf("log does not name the failing rule: %s", logs.String())
	}
	if err := call(t, c, "StartContainer", &agentpb.StartContainerRequest{ContainerId: "c1"}); err != nil {
		t.Fatalf("start: %v", err)
	}
	if err := call(t, c, "GetGuestDetails", &agentpb.GuestDetailsRequest{}); status.Code(err) != codes.Internal {
		t.Fatalf("entry without rule or default = %v, want Internal", err)
	}
}

func TestAllowRequestsFailingPolicy(t *testing.T) {
	e, logs := enforcerWith(t, "", nil)
	if err := e.SetPolicy(context.Background(), &agentpb.SetPolicyRequest{Policy: strings.Replace(readPolicy(t, "deny-exec.rego"), "default ExecProcessRequest := false", "default ExecProcessRequest := false\ndefault AllowRequestsFailingPolicy := true", 1)}); err != nil {
		t.Fatal(err)
	}
	c := agentServer(t, e)
	if err := call(t, c, "ExecProcess", &agentpb.ExecProcessRequest{}); err != nil {
		t.Fatalf("ExecProcess with AllowRequestsFailingPolicy = %v", err)
	}
	if !strings.Contains(logs.String(), "allowed by AllowRequestsFailingPolicy") {
		t.Fatalf("no warning logged: %s", logs.String())
	}
}

func TestExplainDenials(t *testing.T) {
	e, _ := enforcerWith(t, "", nil)
	text := strings.Replace(readPolicy(t, "genpolicy-shaped.rego"), "default AllowRequestsFailingPolicy := false", "default AllowRequestsFailingPolicy := false\nExplainDenials := true", 1)
	if err := e.SetPolicy(context.Background(), &agentpb.SetPolicyRequest{Policy: text}); err != nil {
		t.Fatal(err)
	}
	c := agentServer(t, e)
	err := call(t, c, "CreateContainer", createReq("c1", "registry.local/busybox:latest", "/bin/false"))
	if !strings.Contains(fmt.Sprint(err), "failing rules: args_allowed") {
		t.Fatalf("error %v does not name args_allowed", err)
	}
}

func TestSetPolicyBinding(t *testing.T) {
	ctx := context.Background()
	allow := readPolicy(t, "allow-all.rego")
	denyExec := readPolicy(t, "deny-exec.rego")
	sum := sha256.Sum256([]byte(denyExec))
	binding := &fixedHostData{hd: sum[:]}
	e, _ := enforcerWith(t, "allow-all.rego", binding)

	err := e.SetPolicy(ctx, &agentpb.SetPolicyRequest{Policy: allow + "\n# changed\n"})
	if !errors.Is(err, errdefs.ErrPermissionDenied) || !strings.Contains(err.Error(), "HOST_DATA") {
		t.Fatalf("mismatched policy = %v, want PermissionDenied naming HOST_DATA", err)
	}
	if _, digest := e.Loaded(); digest != sha256hex(allow) {
		t.Fatal("the old policy did not stay after a rejected SetPolicy")
	}
	if err := e.SetPolicy(ctx, &agentpb.SetPolicyRequest{Policy: denyExec}); err != nil {
		t.Fatalf("bound policy: %v", err)
	}
	if _, digest := e.Loaded(); digest != sha256hex(denyExec) {
		t.Fatal("bound policy not installed")
	}
}

func sha256hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return fmt.Sprintf("%x", sum)
}

func TestSetPolicyRejects(t *testing.T) {
	ctx := context.Background()
	e, _ := enforcerWith(t, "allow-all.rego", nil)
	tests := map[string]string{
		"malformed":     "package agent_policy\n\nthis is not rego {",
		"wrong package": "package other\n\ndefault X := true\n",
		"too large":     "package agent_policy\n#" + strings.Repeat("x", MaxPolicySize),
		"bad initdata":  "version = \"0.1.0\"\nalgorithm = \"md5\"\n[data]\n\"policy.rego\" = \"x\"\n",
	}
	for name, text := range tests {
		if err := e.SetPolicy(ctx, &agentpb.SetPolicyRequest{Policy: text}); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: SetPolicy = %v, want InvalidArgument", name, err)
		}
	}
	long := "package agent_policy\n\ndefault CreateContainerRequest := true\n\nbig := \"" + strings.Repeat("a", 2<<20) + "\"\n"
	if err := e.SetPolicy(ctx, &agentpb.SetPolicyRequest{Policy: long}); err != nil {
		t.Fatalf("policy with a 2 MiB line: %v", err)
	}
}

func TestConcurrentRequestsDuringReplacement(t *testing.T) {
	e, _ := enforcerWith(t, "allow-all.rego", nil)
	c := agentServer(t, e)
	allow, deny := readPolicy(t, "allow-all.rego"), readPolicy(t, "deny-exec.rego")
	var wg sync.WaitGroup
	errs := make(chan error, 1000)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				err := call(t, c, "ExecProcess", &agentpb.ExecProcessRequest{ContainerId: "a", ExecId: "b"})
				if err != nil && status.Code(err) != codes.PermissionDenied {
					errs <- err
				}
				if err := call(t, c, "CreateContainer", &agentpb.CreateContainerRequest{ContainerId: "a"}); err != nil {
					errs <- err
				}
			}
		}()
	}
	for i := 0; i < 20; i++ {
		p := allow
		if i%2 == 0 {
			p = deny
		}
		if err := e.SetPolicy(context.Background(), &agentpb.SetPolicyRequest{Policy: p}); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("request during replacement: %v", err)
	}
}

func initdataDoc(policy string) string {
	b, _ := json.Marshal(policy)
	return "version = \"0.1.0\"\nalgorithm = \"sha384\"\n\n[data]\n\"policy.rego\" = " + string(b) + "\n"
}

func TestInitdata(t *testing.T) {
	ctx := context.Background()
	doc := initdataDoc(readPolicy(t, "deny-exec.rego"))
	id, err := ParseInitdata([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if len(id.Digest()) != 48 || !bytes.Equal(id.HostData(), id.Digest()[:32]) {
		t.Fatal("sha384 digest not truncated to 32 bytes")
	}
	binding := &fixedHostData{hd: id.HostData()}
	e, _ := enforcerWith(t, "allow-all.rego", binding)
	if err := e.SetPolicy(ctx, &agentpb.SetPolicyRequest{Policy: doc}); err != nil {
		t.Fatalf("SetPolicy(initdata): %v", err)
	}
	if _, digest := e.Loaded(); digest != sha256hex(readPolicy(t, "deny-exec.rego")) {
		t.Fatal("initdata's policy.rego not installed")
	}
	// Another document (same policy, other text) does not match HOST_DATA.
	if err := e.SetPolicy(ctx, &agentpb.SetPolicyRequest{Policy: doc + "# tampered\n"}); !errors.Is(err, errdefs.ErrPermissionDenied) {
		t.Fatalf("tampered initdata = %v, want PermissionDenied", err)
	}

	// The block device form.
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte(doc))
	zw.Close()
	var dev bytes.Buffer
	dev.WriteString("initdata")
	binary.Write(&dev, binary.LittleEndian, uint64(gz.Len()))
	dev.Write(gz.Bytes())
	dev.Write(make([]byte, 512)) // device padding
	got, err := LoadInitdata(ctx, &dev)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Raw, []byte(doc)) {
		t.Fatal("device initdata differs from the document")
	}
	for name, in := range map[string][]byte{
		"bad magic": append([]byte("notinit!"), make([]byte, 8)...),
		"huge":      append([]byte("initdata"), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f),
		"short":     []byte("init"),
	} {
		if _, err := LoadInitdata(ctx, bytes.NewReader(in)); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: LoadInitdata = %v, want InvalidArgument", name, err)
		}
	}
}

func TestEncodeGolden(t *testing.T) {
	tests := map[string]proto.Message{
		"create_container": createReq("c1", "busybox", "sh", "-c", "echo hi"),
		"exec_process": &agentpb.ExecProcessRequest{ContainerId: "c1", ExecId: "e1",
			Process: &agentpb.Process{Args: []string{"ls"}, Env: []string{"A=b"}, User: &agentpb.User{UID: 1000}}},
		"read_stream":     &agentpb.ReadStreamRequest{ContainerId: "c1", ExecId: "c1", Len: 4096},
		"copy_file":       &agentpb.CopyFileRequest{Path: "/run/kata-containers/shared/containers/x-hosts", FileSize: 10, FileMode: 0o100644, DirMode: 0o40755, Offset: 0, Data: []byte("127.0.0.1\n")},
		"copy_symlink":    &agentpb.CopyFileRequest{Path: "/run/kata-containers/shared/containers/link", FileMode: 0o120777, Data: []byte("target")},
		"update_iface":    &agentpb.UpdateInterfaceRequest{Interface: &typespb.Interface{Name: "eth0", Type: "veth", Mtu: 1500, IPAddresses: []*typespb.IPAddress{{Family: typespb.IPFamily_v6, Address: "fe80::1", Mask: "64"}}}},
		"reseed":          &agentpb.ReseedRandomDevRequest{Data: []byte{1, 2, 255}},
		"set_time":        &agentpb.SetGuestDateTimeRequest{Sec: 1 << 40, Usec: -1},
		"memcg":           &agentpb.MemAgentMemcgConfig{Swap: proto.Bool(true)},
		"destroy_sandbox": &agentpb.DestroySandboxRequest{},
	}
	for name, msg := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := json.MarshalIndent(Encode(msg), "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", "encode", name+".json")
			if *update {
				os.MkdirAll(filepath.Dir(path), 0o755)
				if err := os.WriteFile(path, append(got, '\n'), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update)", err)
			}
			// The OPA-value encoder the gate uses says the same.
			astJSON, err := ast.JSON(encodeAST(msg))
			if err != nil {
				t.Fatal(err)
			}
			viaAST, _ := json.MarshalIndent(astJSON, "", "  ")
			if !bytes.Equal(viaAST, got) {
				t.Fatalf("encodeAST differs from Encode:\n%s\nvs\n%s", viaAST, got)
			}
			if string(got)+"\n" != string(want) {
				t.Fatalf("encoding of %s changed:\ngot  %s\nwant %s", name, got, want)
			}
		})
	}
}

func TestEvalCommand(t *testing.T) {
	dir := t.TempDir()
	req := filepath.Join(dir, "req.json")
	b, _ := json.Marshal(Encode(createReq("c1", "evil/image", "/bin/sh")))
	os.WriteFile(req, b, 0o644)
	var out bytes.Buffer
	err := EvalCommand(context.Background(), []string{"--policy", "testdata/genpolicy-shaped.rego", "--request", req}, &out, &out)
	if !errors.Is(err, ErrDenied) {
		t.Fatalf("EvalCommand = %v, want ErrDenied", err)
	}
	for _, want := range []string{"decision:      denied", "failing rules: args_allowed, image_allowed"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if err := EvalCommand(context.Background(), []string{"--policy", "testdata/allow-all.rego", "--request", req}, &out, &out); err != nil || !strings.Contains(out.String(), "allowed") {
		t.Fatalf("allow-all: %v\n%s", err, out.String())
	}
}

func FuzzEncode(f *testing.F) {
	b, _ := proto.Marshal(createReq("c1", "busybox", "sh"))
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		var m agentpb.CreateContainerRequest
		if proto.Unmarshal(b, &m) != nil {
			return
		}
		if _, err := json.Marshal(Encode(&m)); err != nil {
			t.Fatalf("encoded input does not marshal: %v", err)
		}
	})
}

func FuzzSetPolicy(f *testing.F) {
	f.Add(readPolicy(f, "genpolicy-shaped.rego"))
	f.Add(initdataDoc("package agent_policy\n"))
	f.Add("version = 1")
	f.Fuzz(func(t *testing.T, text string) {
		e, _ := enforcerWith(t, "", nil)
		if err := e.SetPolicy(context.Background(), &agentpb.SetPolicyRequest{Policy: text}); err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("SetPolicy error without a class: %v", err)
		}
	})
}

func TestStateOps(t *testing.T) {
	ctx := context.Background()
	text := `package agent_policy

import rego.v1

CreateContainerRequest := {"allowed": true, "ops": ops} if {
	input.container_id == "a"
	ops := [{"op": "add", "path": "/ids", "value": {"a": 1}}, {"op": "copy", "from": "/ids", "path": "/copy"}, {"op": "test", "path": "/copy/a", "value": 1}]
}

CreateContainerRequest := {"allowed": true, "ops": ops} if {
	input.container_id == "b"
	ops := [{"op": "add", "path": "/ids/b", "value": 2}, {"op": "remove", "path": "/copy"}]
}

CreateContainerRequest := {"allowed": true, "ops": ops} if {
	input.container_id == "bad"
	ops := [{"op": "remove", "path": "/nothing/here"}]
}

default StartContainerRequest := false

StartContainerRequest if data.pstate.ids[input.container_id]
`
	p, err := compile(ctx, text)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"a", "b"} {
		if d, err := p.decide(ctx, "CreateContainerRequest", Encode(&agentpb.CreateContainerRequest{ContainerId: id})); err != nil || !d.Allowed || d.StateOps == 0 {
			t.Fatalf("create %s: %+v %v", id, d, err)
		}
	}
	if _, err := p.decide(ctx, "CreateContainerRequest", Encode(&agentpb.CreateContainerRequest{ContainerId: "bad"})); !errors.Is(err, errdefs.ErrInternal) {
		t.Fatalf("bad op = %v, want Internal", err)
	}
	for id, want := range map[string]bool{"a": true, "b": true, "c": false} {
		d, err := p.decide(ctx, "StartContainerRequest", Encode(&agentpb.StartContainerRequest{ContainerId: id}))
		if err != nil || d.Allowed != want {
			t.Errorf("start %s: %+v %v, want allowed=%v", id, d, err, want)
		}
	}
}

func TestJSONPatch(t *testing.T) {
	doc := map[string]any{"a": []any{1.0, 2.0}, "m~/x": "y"}
	got, err := applyPatch(doc, []patchOp{
		{Op: "add", Path: "/a/1", Value: 9.0},
		{Op: "add", Path: "/a/-", Value: 3.0},
		{Op: "replace", Path: "/m~0~1x", Value: "z"},
		{Op: "move", From: "/m~0~1x", Path: "/moved"},
		{Op: "remove", Path: "/a/0"},
	})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(got)
	if want := `{"a":[9,2,3],"moved":"z"}`; string(b) != want {
		t.Fatalf("patched = %s, want %s", b, want)
	}
	if _, ok := doc["moved"]; ok {
		t.Fatal("applyPatch modified its input")
	}
	for _, bad := range [][]patchOp{{{Op: "replace", Path: "/nope", Value: 1}}, {{Op: "test", Path: "/a/0", Value: 5}}, {{Op: "frob", Path: "/a"}}, {{Op: "add", Path: "a"}}} {
		if _, err := applyPatch(doc, bad); err == nil {
			t.Errorf("patch %+v succeeded", bad)
		}
	}
}
