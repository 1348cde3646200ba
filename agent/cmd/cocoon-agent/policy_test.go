package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cocoon-containers/cocoon/kbs-client/endpoint"
	"github.com/cocoon-containers/cocoon/kbs-client/kbstest"
	"github.com/cocoon-containers/cocoon/kbs-client/server"
	"github.com/cocoon-containers/cocoon/rootfs"
	"github.com/cocoon-containers/cocoon/rpc/agentpb"
)

// requireSimulated skips unless the test binary has the simulated SNP
// provider; make test (hack/test.sh) builds the tests with that tag.
func requireSimulated(t *testing.T) {
	t.Helper()
	if simulatedProvider == nil {
		t.Skip("needs the simulated SNP provider: go test -tags simulated (make test sets it)")
	}
}

func wantCode(t *testing.T, what string, err error, code codes.Code, msg string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), msg) {
		t.Errorf("%s: got %v, want %v containing %q", what, err, code, msg)
	}
}

// TestPolicyBoundToHostData runs the agent binary as a confidential guest
// would (simulated SNP): the image's default policy allows only SetPolicy,
// and only a policy whose hash is HOST_DATA replaces it.
func TestPolicyBoundToHostData(t *testing.T) {
	requireSimulated(t)
	dir := t.TempDir()
	deflt := filepath.Join(dir, "default.rego")
	if err := os.WriteFile(deflt, rootfs.AllowOnlySetPolicy(), 0o644); err != nil {
		t.Fatal(err)
	}
	owner := rootfs.AllowAllPolicy()
	hd := sha256.Sum256(owner)
	a := startAgent(t, "COCOON_DEFAULT_POLICY="+deflt, "COCOON_ATTESTATION=simulated",
		"COCOON_SIM_HOST_DATA="+hex.EncodeToString(hd[:]))
	conn := a.dial(t)
	c := agentpb.NewAgentServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	if _, err := agentpb.NewHealthClient(conn).Check(ctx, &agentpb.CheckRequest{}); err != nil {
		t.Fatalf("Health is not gated, got %v", err)
	}
	_, err := c.CreateSandbox(ctx, &agentpb.CreateSandboxRequest{SandboxId: "sb"})
	wantCode(t, "CreateSandbox under allow-only-SetPolicy", err, codes.PermissionDenied, "CreateSandboxRequest is blocked by policy")

	other := append([]byte("# not the owner's policy\n"), owner...)
	_, err = c.SetPolicy(ctx, &agentpb.SetPolicyRequest{Policy: string(other)})
	wantCode(t, "SetPolicy of a policy HOST_DATA does not name", err, codes.PermissionDenied, "")
	_, err = c.CreateSandbox(ctx, &agentpb.CreateSandboxRequest{SandboxId: "sb"})
	wantCode(t, "CreateSandbox after a refused SetPolicy", err, codes.PermissionDenied, "blocked by policy")

	if _, err := c.SetPolicy(ctx, &agentpb.SetPolicyRequest{Policy: string(owner)}); err != nil {
		t.Fatalf("SetPolicy of the bound policy: %v", err)
	}
	if _, err := c.CreateSandbox(ctx, &agentpb.CreateSandboxRequest{SandboxId: "sb"}); err != nil {
		t.Fatalf("CreateSandbox under the owner's policy: %v", err)
	}
	a.stop(t)
	if strings.Contains(a.stderr.String(), "panic") {
		t.Errorf("agent log shows a panic:\n%s", a.stderr)
	}
}

// TestMissingDefaultPolicyFailsClosed: without a loadable policy the agent
// serves Health and SetPolicy only.
func TestMissingDefaultPolicyFailsClosed(t *testing.T) {
	a := startAgent(t, "COCOON_DEFAULT_POLICY="+filepath.Join(t.TempDir(), "absent.rego"))
	conn := a.dial(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := agentpb.NewHealthClient(conn).Check(ctx, &agentpb.CheckRequest{}); err != nil {
		t.Fatalf("Health: %v", err)
	}
	c := agentpb.NewAgentServiceClient(conn)
	_, err := c.CreateSandbox(ctx, &agentpb.CreateSandboxRequest{SandboxId: "sb"})
	wantCode(t, "CreateSandbox without a policy", err, codes.PermissionDenied, "")
	_, err = c.ExecProcess(ctx, &agentpb.ExecProcessRequest{ContainerId: "x", ExecId: "y"})
	wantCode(t, "ExecProcess without a policy", err, codes.PermissionDenied, "")
	a.stop(t)
}

func TestFindInitdataDevice(t *testing.T) {
	sys, dev := t.TempDir(), t.TempDir()
	for name, content := range map[string]string{"vda": "not initdata", "vdb": "initdata\x10\x00", "vdb1": "initdata", "sda": "initdata"} {
		if err := os.MkdirAll(filepath.Join(sys, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dev, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(sys, "vdb1", "partition"), []byte("1"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := findInitdataDevice(sys, dev)
	if err != nil || got != filepath.Join(dev, "vdb") {
		t.Errorf("got %q, %v; want %s", got, err, filepath.Join(dev, "vdb"))
	}
	os.Remove(filepath.Join(dev, "vdb"))
	got, err = findInitdataDevice(sys, dev)
	if err != nil || got != "" {
		t.Errorf("without the device: got %q, %v", got, err)
	}
}

// TestWorkloadEndpointThroughAgent: the agent binary, configured with a
// KBS URL and simulated SNP, serves the workload endpoint; a workload gets
// its secret after attestation, and the agent's log holds no secret,
// nonce, cookie or token.
func TestWorkloadEndpointThroughAgent(t *testing.T) {
	requireSimulated(t)
	k := kbstest.Start(t, server.Config{})
	h, m := kbstest.HostData(), kbstest.Measurement()
	a := startAgent(t, "COCOON_ATTESTATION=simulated", "COCOON_KBS_URL="+k.Srv.URL,
		"COCOON_SIM_HOST_DATA="+hex.EncodeToString(h[:]), "COCOON_SIM_MEASUREMENT="+hex.EncodeToString(m[:]))
	a.dial(t)
	url := "http://" + endpoint.DefaultAddr + "/cdh/resource/default/key/1"
	var body []byte
	deadline := time.Now().Add(time.Minute)
	for {
		resp, err := http.Get(url)
		if err == nil {
			body, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("GET %s: %s: %s", url, resp.Status, body)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("workload endpoint not serving: %v\n%s", err, a.stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if string(body) != kbstest.Secret {
		t.Errorf("secret = %q, want %q", body, kbstest.Secret)
	}
	resp, err := http.Get("http://" + endpoint.DefaultAddr + "/cdh/resource/default/key/../../x")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Error("a traversal path was served")
		}
	}
	a.stop(t)
	logs := a.stderr.String()
	for _, s := range append(k.Sensitive(), kbstest.Secret) {
		if s != "" && strings.Contains(logs, s) {
			t.Errorf("agent log leaks %q", s)
		}
	}
}
