package policy

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
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
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/cocoon-containers/cocoon/rpc/agentpb"
)

func mustEncode(m proto.Message) map[string]any {
	in, err := Encode(m)
	if err != nil {
		panic(fmt.Sprintf("encode %T: %v", m, err))
	}
	return in
}

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

func TestAllowRequestsFailingPolicyCoversUndefined(t *testing.T) {
	ctx := context.Background()
	text := "package agent_policy\n\nimport rego.v1\n\nAllowRequestsFailingPolicy := true\n\nCreateContainerRequest if input.container_id == \"ok\"\n"
	for _, tt := range []struct {
		name   string
		policy string
		want   codes.Code
	}{
		{"failures allowed", text, codes.OK},
		{"failures refused", strings.Replace(text, "AllowRequestsFailingPolicy := true", "AllowRequestsFailingPolicy := false", 1), codes.Internal},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e, logs := enforcerWith(t, "", nil)
			if err := e.SetPolicy(ctx, &agentpb.SetPolicyRequest{Policy: tt.policy}); err != nil {
				t.Fatal(err)
			}
			c := agentServer(t, e)
			// CreateContainerRequest is undefined for this input and has
			// no default; StartContainerRequest has no rule at all.
			for _, m := range []struct {
				method string
				req    proto.Message
			}{{"CreateContainer", &agentpb.CreateContainerRequest{ContainerId: "other"}}, {"StartContainer", &agentpb.StartContainerRequest{}}} {
				if got := status.Code(call(t, c, m.method, m.req)); got != tt.want {
					t.Errorf("%s: code %v, want %v", m.method, got, tt.want)
				}
			}
			if tt.want == codes.OK && !strings.Contains(logs.String(), "allowed by AllowRequestsFailingPolicy") {
				t.Errorf("no warning logged: %s", logs.String())
			}
		})
	}
}

// TestHandlerNeverRunsOnDenial: the gate decodes and checks the request
// itself, so even a handler that never decodes its request does not run
// when the policy refuses it.
func TestHandlerNeverRunsOnDenial(t *testing.T) {
	for _, tt := range []struct {
		policy  string
		wantRan bool
	}{{"deny-exec.rego", false}, {"allow-all.rego", true}} {
		t.Run(tt.policy, func(t *testing.T) {
			e, _ := enforcerWith(t, tt.policy, nil)
			srv, err := ttrpc.NewServer(ttrpc.WithUnaryServerInterceptor(e.UnaryInterceptor()))
			if err != nil {
				t.Fatal(err)
			}
			var mu sync.Mutex
			ran := false
			srv.RegisterService("grpc.AgentService", &ttrpc.ServiceDesc{Methods: map[string]ttrpc.Method{
				"ExecProcess": func(context.Context, func(interface{}) error) (interface{}, error) {
					mu.Lock()
					ran = true
					mu.Unlock()
					return &emptypb.Empty{}, nil
				},
			}})
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
			err = call(t, c, "ExecProcess", &agentpb.ExecProcessRequest{ContainerId: "a", ExecId: "b", Process: &agentpb.Process{Args: []string{"sh"}}})
			mu.Lock()
			defer mu.Unlock()
			if ran != tt.wantRan {
				t.Errorf("handler ran = %v (call error %v), want %v", ran, err, tt.wantRan)
			}
		})
	}
}

func TestCopyFilePolicy(t *testing.T) {
	text := `package agent_policy

import future.keywords.if
import future.keywords.in

default CopyFileRequest := false

CopyFileRequest if {
	startswith(input.path, "/run/kata-containers/shared/containers/")
	input.file_type in {"Regular", "Directory"}
	input.symlink_target == null
}

CopyFileRequest if {
	startswith(input.path, "/run/kata-containers/shared/containers/")
	input.file_type == "Symlink"
	not startswith(input.symlink_target, "/")
	not contains(input.symlink_target, "..")
}
`
	e, _ := enforcerWith(t, "", nil)
	if err := e.SetPolicy(context.Background(), &agentpb.SetPolicyRequest{Policy: text}); err != nil {
		t.Fatal(err)
	}
	c := agentServer(t, e)
	dir := "/run/kata-containers/shared/containers/"
	tests := []struct {
		name string
		req  *agentpb.CopyFileRequest
		want codes.Code
	}{
		{"regular file", &agentpb.CopyFileRequest{Path: dir + "c1-hosts", FileMode: 0o100644, FileSize: 9, Data: []byte("127.0.0.1")}, codes.OK},
		{"directory", &agentpb.CopyFileRequest{Path: dir + "c1-certs", FileMode: 0o40755}, codes.OK},
		{"relative symlink", &agentpb.CopyFileRequest{Path: dir + "c1-link", FileMode: 0o120777, Data: []byte("data/token")}, codes.OK},
		{"absolute symlink", &agentpb.CopyFileRequest{Path: dir + "c1-link", FileMode: 0o120777, Data: []byte("/etc/shadow")}, codes.PermissionDenied},
		{"escaping symlink", &agentpb.CopyFileRequest{Path: dir + "c1-link", FileMode: 0o120777, Data: []byte("../../../etc")}, codes.PermissionDenied},
		{"device node", &agentpb.CopyFileRequest{Path: dir + "c1-dev", FileMode: 0o20644}, codes.PermissionDenied},
		{"outside the shared directory", &agentpb.CopyFileRequest{Path: "/etc/passwd", FileMode: 0o100644}, codes.PermissionDenied},
		{"symlink target not UTF-8", &agentpb.CopyFileRequest{Path: dir + "c1-link", FileMode: 0o120777, Data: []byte{0xc3, 0x28}}, codes.InvalidArgument},
	}
	for _, tt := range tests {
		if got := status.Code(call(t, c, "CopyFile", tt.req)); got != tt.want {
			t.Errorf("%s: code %v, want %v", tt.name, got, tt.want)
		}
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

	// The block device form, padded to the device size.
	got, err := LoadInitdata(ctx, bytes.NewReader(initdataDevice([]byte(doc), 512)))
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

func TestEvalCommand(t *testing.T) {
	dir := t.TempDir()
	req := filepath.Join(dir, "req.json")
	b, _ := json.Marshal(mustEncode(createReq("c1", "evil/image", "/bin/sh")))
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
	// A recorded line of the Kata agent's policy log names its entry.
	logLine := filepath.Join(dir, "policy.jsonl")
	b, _ = json.Marshal(map[string]any{"kind": "ExecProcessRequest", "request": mustEncode(&agentpb.ExecProcessRequest{ContainerId: "c1"})})
	os.WriteFile(logLine, b, 0o644)
	out.Reset()
	if err := EvalCommand(context.Background(), []string{"--policy", "testdata/deny-exec.rego", "--request", logLine}, &out, &out); !errors.Is(err, ErrDenied) || !strings.Contains(out.String(), "entry:         ExecProcessRequest") || !strings.Contains(out.String(), "print:         exec is not allowed in this pod") {
		t.Fatalf("log line: %v\n%s", err, out.String())
	}
	out.Reset()
	if err := EvalCommand(context.Background(), []string{"--policy", "testdata/deny-exec.rego", "--request", logLine, "--kind", "StartContainerRequest"}, &out, &out); err != nil || !strings.Contains(out.String(), "entry:         StartContainerRequest") {
		t.Fatalf("log line with --kind: %v\n%s", err, out.String())
	}
	out.Reset()
	if err := EvalCommand(context.Background(), []string{"eval", "--policy", "testdata/allow-all.rego", "--request", req}, &out, &out); err != nil || !strings.Contains(out.String(), "allowed") {
		t.Fatalf("allow-all: %v\n%s", err, out.String())
	}
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
		if d, err := p.decide(ctx, "CreateContainerRequest", mustEncode(&agentpb.CreateContainerRequest{ContainerId: id})); err != nil || !d.Allowed || d.StateOps == 0 {
			t.Fatalf("create %s: %+v %v", id, d, err)
		}
	}
	if _, err := p.decide(ctx, "CreateContainerRequest", mustEncode(&agentpb.CreateContainerRequest{ContainerId: "bad"})); !errors.Is(err, errdefs.ErrInternal) {
		t.Fatalf("bad op = %v, want Internal", err)
	}
	for id, want := range map[string]bool{"a": true, "b": true, "c": false} {
		d, err := p.decide(ctx, "StartContainerRequest", mustEncode(&agentpb.StartContainerRequest{ContainerId: id}))
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

// initdataDevice wraps a document as an initdata block device image.
func initdataDevice(doc []byte, padding int) []byte {
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(doc)
	zw.Close()
	var dev bytes.Buffer
	dev.WriteString("initdata")
	binary.Write(&dev, binary.LittleEndian, uint64(gz.Len()))
	dev.Write(gz.Bytes())
	dev.Write(make([]byte, padding))
	return dev.Bytes()
}

// FuzzLoadInitdata feeds arbitrary device images to the initdata reader:
// it either returns a document whose digest it can compute or an
// InvalidArgument error, and never panics.
func FuzzLoadInitdata(f *testing.F) {
	f.Add(initdataDevice([]byte(initdataDoc("package agent_policy\n")), 512))
	f.Add(initdataDevice([]byte("version = \"0.1.0\"\nalgorithm = \"sha512\"\n[data]\n"), 0))
	f.Add(initdataDevice([]byte("not toml ["), 0))
	f.Add([]byte("initdata\x04\x00\x00\x00\x00\x00\x00\x00\x1f\x8b\x08\x00"))
	f.Add([]byte("initdat"))
	f.Fuzz(func(t *testing.T, b []byte) {
		id, err := LoadInitdata(context.Background(), bytes.NewReader(b))
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("LoadInitdata error without a class: %v", err)
			}
			return
		}
		if got := len(id.HostData()); got != 32 {
			t.Fatalf("HOST_DATA of %d bytes, want 32", got)
		}
	})
}

func TestStatefulDecisionsAreSerialised(t *testing.T) {
	ctx := context.Background()
	p, err := compile(ctx, readPolicy(t, "genpolicy-shaped.rego"))
	if err != nil {
		t.Fatal(err)
	}
	for round := 0; round < 20; round++ {
		id := fmt.Sprintf("c%d", round)
		in := mustEncode(createReq(id, "registry.local/busybox:latest", "/bin/sh", "-c", "echo hello"))
		var wg sync.WaitGroup
		var mu sync.Mutex
		allowed := 0
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				d, err := p.decide(ctx, "CreateContainerRequest", in)
				if err != nil {
					t.Error(err)
					return
				}
				if d.Allowed {
					mu.Lock()
					allowed++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if allowed != 1 {
			t.Fatalf("round %d: %d concurrent creates of %s allowed, want 1", round, allowed, id)
		}
	}
}

func TestStateful(t *testing.T) {
	tests := []struct {
		name, text string
		want       bool
	}{
		{"allow-all", readPolicy(t, "allow-all.rego"), false},
		{"deny-exec", readPolicy(t, "deny-exec.rego"), false},
		{"genpolicy-shaped", readPolicy(t, "genpolicy-shaped.rego"), true},
		{"reads state", "package agent_policy\n\nimport rego.v1\n\nStartContainerRequest if data.pstate[input.container_id]\n", true},
		{"computed result", "package agent_policy\n\nimport rego.v1\n\nStartContainerRequest := r if r := {\"allowed\": true}\n", true},
	}
	for _, tt := range tests {
		p, err := compile(context.Background(), tt.text)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if p.stateful != tt.want {
			t.Errorf("%s: stateful = %v, want %v", tt.name, p.stateful, tt.want)
		}
	}
}

// TestRegoVersions: Rego v0 as genpolicy and older policies write it (with
// and without future.keywords) and Rego v1 are all accepted.
func TestRegoVersions(t *testing.T) {
	tests := map[string]string{
		"v0 plain":          "package agent_policy\n\ndefault CreateContainerRequest = false\n\nCreateContainerRequest {\n  input.container_id == \"ok\"\n}\n",
		"v0 future":         "package agent_policy\n\nimport future.keywords.if\nimport future.keywords.in\n\ndefault CreateContainerRequest := false\n\nCreateContainerRequest if input.container_id in [\"ok\"]\n",
		"v0 import input":   "package agent_policy\n\nimport input\n\ndefault CreateContainerRequest := false\n\nCreateContainerRequest {\n  input.container_id == \"ok\"\n}\n",
		"v1 with rego.v1":   "package agent_policy\n\nimport rego.v1\n\ndefault CreateContainerRequest := false\n\nCreateContainerRequest if input.container_id == \"ok\"\n",
		"v1 without import": "package agent_policy\n\ndefault CreateContainerRequest := false\n\nids contains \"ok\"\n\nCreateContainerRequest if input.container_id in ids\n",
	}
	ctx := context.Background()
	for name, text := range tests {
		p, err := compile(ctx, text)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		for id, want := range map[string]bool{"ok": true, "other": false} {
			d, err := p.decide(ctx, "CreateContainerRequest", mustEncode(&agentpb.CreateContainerRequest{ContainerId: id}))
			if err != nil || d.Allowed != want {
				t.Errorf("%s: container %s: %+v %v, want allowed=%v", name, id, d, err, want)
			}
		}
	}
}

// TestImagePolicies checks the default policies the image builder ships
// (rootfs/policies) against this engine: every entry point is decided, the
// development policy allows all, the confidential one only SetPolicy.
func TestImagePolicies(t *testing.T) {
	ctx := context.Background()
	for file, allowed := range map[string]func(string) bool{
		"allow-all.rego":            func(string) bool { return true },
		"allow-only-setpolicy.rego": func(e string) bool { return e == "SetPolicyRequest" },
	} {
		text, err := os.ReadFile(filepath.Join("..", "..", "rootfs", "policies", file))
		if errors.Is(err, os.ErrNotExist) {
			t.Skipf("rootfs/policies/%s is not in this tree", file)
		}
		if err != nil {
			t.Fatal(err)
		}
		p, err := compile(ctx, string(text))
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		for entry := range entryNames {
			d, err := p.decide(ctx, entry, map[string]any{})
			if err != nil {
				t.Errorf("%s: %s: %v", file, entry, err)
				continue
			}
			if want := allowed(entry); d.Allowed != want {
				t.Errorf("%s: %s allowed = %v, want %v", file, entry, d.Allowed, want)
			}
		}
	}
}

// FuzzJSONPatch applies arbitrary operations to a small document: the patch
// either fails with errPatch or yields a document that still marshals, and
// never modifies its input.
func FuzzJSONPatch(f *testing.F) {
	f.Add(`[{"op":"add","path":"/a/1","value":9},{"op":"move","from":"/m","path":"/a/-"}]`)
	f.Add(`[{"op":"replace","path":"/a/-","value":1}]`)
	f.Add(`[{"op":"copy","from":"/a","path":"/a/0"},{"op":"remove","path":"/a/0/1"}]`)
	f.Add(`[{"op":"test","path":"/m","value":"y"},{"op":"remove","path":""}]`)
	f.Add(`[{"op":"add","path":"","value":[]},{"op":"add","path":"/0","value":{}}]`)
	f.Fuzz(func(t *testing.T, opsJSON string) {
		var ops []patchOp
		if json.Unmarshal([]byte(opsJSON), &ops) != nil || len(ops) > maxOps {
			return
		}
		doc := map[string]any{"a": []any{1.0, 2.0}, "m": "y"}
		before, _ := json.Marshal(doc)
		got, err := applyPatch(doc, ops)
		if after, _ := json.Marshal(doc); !bytes.Equal(before, after) {
			t.Fatalf("input modified: %s -> %s", before, after)
		}
		if err != nil {
			if !errors.Is(err, errPatch) {
				t.Fatalf("error without errPatch: %v", err)
			}
			return
		}
		if _, err := json.Marshal(got); err != nil {
			t.Fatalf("patched document does not marshal: %v", err)
		}
	})
}
