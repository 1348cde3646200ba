package policy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"google.golang.org/protobuf/proto"

	"github.com/cocoon-containers/cocoon/rpc/agentpb"
)

// bigPolicy builds a genpolicy-sized policy: many argument-less and
// parameterised rules over the OCI spec plus a policy_data document with a
// pod's containers, comparable to genpolicy's rules.rego (~57 KB) and its
// data.
func bigPolicy() string {
	var b strings.Builder
	b.WriteString("package agent_policy\n\nimport future.keywords.in\nimport future.keywords.if\nimport future.keywords.every\n\n")
	b.WriteString("default CreateContainerRequest := {\"allowed\": false}\ndefault AllowRequestsFailingPolicy := false\n\n")
	b.WriteString(`CreateContainerRequest := {"ops": ops, "allowed": true} if {
    some p in policy_data.containers
    p.image == input.OCI.Annotations["io.kubernetes.cri.image-name"]
    allow_process(p.process, input.OCI.Process)
    allow_env(p.process.env, input.OCI.Process.Env)
    allow_mounts(p.mounts, input.OCI.Mounts)
    allow_annotations(p.annotations, input.OCI.Annotations)
    allow_linux(p.linux, input.OCI.Linux)
    ops := [{"op": "add", "path": concat("", ["/", input.container_id]), "value": p.name}]
}

allow_process(pp, ip) if {
    pp.args == ip.Args
    pp.cwd == ip.Cwd
    pp.terminal == ip.Terminal
    pp.no_new_privileges == ip.NoNewPrivileges
}

allow_env(allowed, env) if {
    every e in env {
        some pattern in allowed
        regex.match(pattern, e)
    }
}

allow_mounts(pm, im) if {
    every m in im {
        some p in pm
        p.destination == m.destination
        p.type_ == m.type_
        every o in m.options { o in p.options }
    }
}

allow_annotations(pa, ia) if {
    every k, v in pa {
        ia[k] == v
    }
}

allow_linux(pl, il) if {
    every ns in il.Namespaces { ns.Type in pl.namespaces }
    every p in il.MaskedPaths { p in pl.masked_paths }
    every p in il.ReadonlyPaths { p in pl.readonly_paths }
}
`)
	// Many small rules, as genpolicy has for each request type and field.
	for i := 0; b.Len() < 57*1024; i++ {
		fmt.Fprintf(&b, "\ncheck_field_%d(v) if {\n    count(v) < %d\n    not startswith(v, \"forbidden-%d\")\n    print(\"checked field %d\")\n}\n", i, 1000+i, i, i)
	}
	b.WriteString("\npolicy_data := ")
	var containers []any
	for c := 0; c < 12; c++ {
		var env []string
		for e := 0; e < 40; e++ {
			env = append(env, fmt.Sprintf("^VAR_%d_%d=.*$", c, e))
		}
		env = append(env, "^PATH=.*$", "^HOSTNAME=.*$", "^TERM=.*$")
		var mounts []any
		for m := 0; m < 15; m++ {
			mounts = append(mounts, map[string]any{"destination": fmt.Sprintf("/mnt/vol%d", m), "type_": "bind", "options": []string{"rbind", "rprivate", "rw"}})
		}
		mounts = append(mounts, map[string]any{"destination": "/proc", "type_": "proc", "options": []string{"nosuid", "noexec", "nodev"}})
		containers = append(containers, map[string]any{
			"name":        fmt.Sprintf("container-%d", c),
			"image":       fmt.Sprintf("registry.local/app-%d:1.0", c),
			"process":     map[string]any{"args": []string{"/bin/sh", "-c", fmt.Sprintf("serve %d", c)}, "cwd": "/", "terminal": false, "no_new_privileges": true, "env": env},
			"mounts":      mounts,
			"annotations": map[string]string{"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-name": "demo"},
			"linux":       map[string]any{"namespaces": []string{"ipc", "uts", "mount", "pid"}, "masked_paths": []string{"/proc/kcore", "/proc/keys", "/sys/firmware"}, "readonly_paths": []string{"/proc/sys", "/proc/bus"}},
		})
	}
	data, _ := json.MarshalIndent(map[string]any{"containers": containers}, "", "  ")
	b.Write(data)
	b.WriteString("\n")
	return b.String()
}

// realisticCreate is a CreateContainerRequest that the big policy allows
// (container-7).
func realisticCreate(id string) *agentpb.CreateContainerRequest {
	env := []string{"PATH=/usr/bin:/bin", "HOSTNAME=demo", "TERM=xterm"}
	for e := 0; e < 40; e++ {
		env = append(env, fmt.Sprintf("VAR_7_%d=value-%d", e, e))
	}
	var mounts []*agentpb.Mount
	for m := 0; m < 15; m++ {
		mounts = append(mounts, &agentpb.Mount{Destination: fmt.Sprintf("/mnt/vol%d", m), Source: fmt.Sprintf("/run/kata-containers/shared/containers/%s-vol%d", id, m), Type: "bind", Options: []string{"rbind", "rprivate", "rw"}})
	}
	mounts = append(mounts, &agentpb.Mount{Destination: "/proc", Source: "proc", Type: "proc", Options: []string{"nosuid", "noexec", "nodev"}})
	return &agentpb.CreateContainerRequest{
		ContainerId: id, ExecId: id,
		OCI: &agentpb.Spec{
			Version: "1.1.0",
			Process: &agentpb.Process{Args: []string{"/bin/sh", "-c", "serve 7"}, Cwd: "/", NoNewPrivileges: true, Env: env},
			Root:    &agentpb.Root{Path: "/run/kata-containers/shared/containers/" + id + "/rootfs", Readonly: false},
			Mounts:  mounts,
			Annotations: map[string]string{
				"io.kubernetes.cri.image-name":     "registry.local/app-7:1.0",
				"io.kubernetes.cri.container-type": "container",
				"io.kubernetes.cri.sandbox-name":   "demo",
				"io.kubernetes.cri.container-name": "container-7",
				"io.katacontainers.pkg.oci.bundle": "/run/containerd/io.containerd.runtime.v2.task/k8s.io/" + id,
			},
			Linux: &agentpb.Linux{
				Namespaces:    []*agentpb.LinuxNamespace{{Type: "ipc"}, {Type: "uts"}, {Type: "mount"}},
				MaskedPaths:   []string{"/proc/kcore", "/proc/keys"},
				ReadonlyPaths: []string{"/proc/sys"},
			},
		},
	}
}

func percentiles(d []time.Duration) (p50, p95 time.Duration) {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[len(d)/2], d[len(d)*95/100]
}

func rssMiB() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return float64(kb) / 1024
		}
	}
	return 0
}

func report(b *testing.B, d []time.Duration) {
	p50, p95 := percentiles(d)
	b.ReportMetric(float64(p50.Nanoseconds())/1000, "p50-us")
	b.ReportMetric(float64(p95.Nanoseconds())/1000, "p95-us")
}

// inProcess measures what the agent's gate does per request: the ttrpc
// interceptor decoding the request, encoding it as policy input,
// evaluating and patching the state (a fresh container id each time).
// With full set, the allow-all entry is evaluated like any other rule
// instead of being answered from its constant default.
func inProcess(b *testing.B, text string, full bool) {
	ctx := context.Background()
	p, err := compile(ctx, text)
	if err != nil {
		b.Fatal(err)
	}
	if full {
		p.constant = map[string]bool{}
	}
	e := &Enforcer{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	e.cur.Store(p)
	if d, err := p.decide(ctx, "CreateContainerRequest", mustEncode(realisticCreate("warm-up"))); err != nil || !d.Allowed {
		b.Fatalf("warm-up: %+v %v", d, err)
	}
	wire := make([][]byte, b.N)
	for i := range wire {
		if wire[i], err = proto.Marshal(realisticCreate("c" + strconv.Itoa(i))); err != nil {
			b.Fatal(err)
		}
	}
	gate := e.UnaryInterceptor()
	info := &ttrpc.UnaryServerInfo{FullMethod: "/grpc.AgentService/CreateContainer"}
	// The handler's own decoding is the agent's work, not the gate's.
	handler := func(context.Context, func(interface{}) error) (interface{}, error) { return nil, nil }
	ds := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		payload := wire[i]
		start := time.Now()
		_, err := gate(ctx, func(v interface{}) error { return proto.Unmarshal(payload, v.(proto.Message)) }, info, handler)
		ds = append(ds, time.Since(start))
		if err != nil {
			b.Fatalf("decision: %v", err)
		}
	}
	b.StopTimer()
	report(b, ds)
	b.ReportMetric(rssMiB(), "rss-MiB")
	b.ReportMetric(float64(len(text))/1024, "policy-KiB")
}

func BenchmarkAllowAllInProcess(b *testing.B)  { inProcess(b, readPolicy(b, "allow-all.rego"), false) }
func BenchmarkAllowAllEvaluated(b *testing.B)  { inProcess(b, readPolicy(b, "allow-all.rego"), true) }
func BenchmarkGenpolicyInProcess(b *testing.B) { inProcess(b, bigPolicy(), false) }

// bareOPA is OPA's own evaluation of the same prepared query with a
// pre-built input: no encoding, no state patching.
func bareOPA(b *testing.B, text string) {
	ctx := context.Background()
	p, err := compile(ctx, text)
	if err != nil {
		b.Fatal(err)
	}
	q, err := p.query(ctx, "CreateContainerRequest")
	if err != nil {
		b.Fatal(err)
	}
	in, err := ast.InterfaceToValue(mustEncode(realisticCreate("c")))
	if err != nil {
		b.Fatal(err)
	}
	ds := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		rs, err := q.Eval(ctx, rego.EvalParsedInput(in))
		ds = append(ds, time.Since(start))
		if err != nil || len(rs) == 0 {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	report(b, ds)
}

func BenchmarkAllowAllBareOPA(b *testing.B)  { bareOPA(b, readPolicy(b, "allow-all.rego")) }
func BenchmarkGenpolicyBareOPA(b *testing.B) { bareOPA(b, bigPolicy()) }

// server posts the same input to an OPA server (opa run --server) whose
// URL the bench script passes in OPA_URL_<NAME>.
func server(b *testing.B, env string) {
	url := os.Getenv(env)
	if url == "" {
		b.Skipf("%s not set (hack/bench/policy.sh starts the OPA server)", env)
	}
	body, _ := json.Marshal(map[string]any{"input": mustEncode(realisticCreate("c"))})
	client := &http.Client{Timeout: 10 * time.Second}
	ds := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		resp, err := client.Post(url+"/v1/data/agent_policy/CreateContainerRequest", "application/json", bytes.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		var out struct {
			Result any `json:"result"`
		}
		err = json.NewDecoder(resp.Body).Decode(&out)
		resp.Body.Close()
		ds = append(ds, time.Since(start))
		if err != nil || out.Result == nil {
			b.Fatalf("server answer: %v %v", out, err)
		}
	}
	b.StopTimer()
	report(b, ds)
}

func BenchmarkAllowAllServer(b *testing.B)  { server(b, "OPA_URL_ALLOW_ALL") }
func BenchmarkGenpolicyServer(b *testing.B) { server(b, "OPA_URL_GENPOLICY") }

// TestBigPolicyAllowsRealisticRequest keeps the benchmark honest: the big
// policy allows the realistic request and denies a changed one.
func TestBigPolicyAllowsRealisticRequest(t *testing.T) {
	ctx := context.Background()
	p, err := compile(ctx, bigPolicy())
	if err != nil {
		t.Fatal(err)
	}
	req := realisticCreate("x")
	d, err := p.decide(ctx, "CreateContainerRequest", mustEncode(req))
	if err != nil || !d.Allowed {
		t.Fatalf("realistic request: %+v %v", d, err)
	}
	req.ContainerId = "y"
	req.OCI.Process.Env = append(req.OCI.Process.Env, "LD_PRELOAD=/evil.so")
	d, err = p.decide(ctx, "CreateContainerRequest", mustEncode(req))
	if err != nil || d.Allowed {
		t.Fatalf("request with an extra env var: %+v %v", d, err)
	}
	// The function that rejected the request is named, the ones that
	// accepted it for the matching container are not.
	if got, want := strings.Join(d.FailingRules, ","), "allow_env"; got != want {
		t.Errorf("failing rules = %s, want %s", got, want)
	}
	if n := len(bigPolicy()); n < 57*1024 {
		t.Fatalf("big policy is %d bytes, want genpolicy-sized", n)
	}
}

// TestWriteBigPolicy writes the benchmark's big policy for the OPA server
// when COCOON_WRITE_BIG_POLICY names a file (hack/bench/policy.sh).
func TestWriteBigPolicy(t *testing.T) {
	path := os.Getenv("COCOON_WRITE_BIG_POLICY")
	if path == "" {
		t.Skip("COCOON_WRITE_BIG_POLICY not set")
	}
	if err := os.WriteFile(path, []byte(bigPolicy()), 0o644); err != nil {
		t.Fatal(err)
	}
}
