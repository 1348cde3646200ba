package client_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cocoon-containers/cocoon/attestation"
	"github.com/cocoon-containers/cocoon/attestation/simulated"
	"github.com/cocoon-containers/cocoon/kbs-client/client"
	"github.com/cocoon-containers/cocoon/kbs-client/protocol"
	"github.com/cocoon-containers/cocoon/kbs-client/server"
	"github.com/cocoon-containers/cocoon/kbs-client/teekey"
)

const secret = "s3cr3t-value-that-must-not-leak"

// syncBuffer collects logs from concurrent handlers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

type kbs struct {
	srv     *httptest.Server
	handler atomic.Pointer[http.Handler]
	attests atomic.Int32
	logs    *syncBuffer
	repo    string
}

func measurement() [48]byte {
	var m [48]byte
	copy(m[:], bytes.Repeat([]byte{0x4d}, 48))
	return m
}

func hostData() [32]byte {
	var h [32]byte
	copy(h[:], bytes.Repeat([]byte{0x48}, 32))
	return h
}

// policyFor releases resources only to the expected measurement and host data.
func policyFor(m [48]byte, h [32]byte) string {
	return `package policy
import rego.v1
default allow := false
allow if {
	input.claims.measurement == "` + hex.EncodeToString(m[:]) + `"
	input.claims.host_data == "` + hex.EncodeToString(h[:]) + `"
	not input.claims.policy.debug
}
`
}

func newKBS(t *testing.T, cfg server.Config) *kbs {
	t.Helper()
	k := &kbs{logs: &syncBuffer{}, repo: t.TempDir()}
	os.MkdirAll(filepath.Join(k.repo, "default", "key"), 0o700)
	os.WriteFile(filepath.Join(k.repo, "default", "key", "1"), []byte(secret), 0o600)
	k.restart(t, cfg)
	k.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/kbs/v0/attest" {
			k.attests.Add(1)
		}
		(*k.handler.Load()).ServeHTTP(w, r)
	}))
	t.Cleanup(k.srv.Close)
	return k
}

// restart replaces the KBS (new signing key, no sessions), as a KBS
// restart would.
func (k *kbs) restart(t *testing.T, cfg server.Config) {
	t.Helper()
	cfg.Repository = k.repo
	cfg.TrustSimulated = true
	cfg.Logger = slog.New(slog.NewTextHandler(k.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if cfg.ResourcePolicy == "" {
		cfg.ResourcePolicy = policyFor(measurement(), hostData())
	}
	s, err := server.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	h := s.Handler()
	k.handler.Store(&h)
}

func guest(t *testing.T, url string, m [48]byte, h [32]byte) *client.Client {
	t.Helper()
	p, err := simulated.New(simulated.Options{Measurement: m, HostData: h})
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(client.Config{URL: url, Provider: p, Backoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestFlow(t *testing.T) {
	ctx := context.Background()
	k := newKBS(t, server.Config{})
	c := guest(t, k.srv.URL, measurement(), hostData())
	for i := 0; i < 3; i++ {
		got, err := c.GetResource(ctx, "default/key/1")
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != secret {
			t.Fatalf("resource = %q", got)
		}
	}
	if n := k.attests.Load(); n != 1 {
		t.Fatalf("attested %d times for 3 fetches, want 1 (token reuse)", n)
	}
	// After a KBS restart the old token is unknown: one re-attestation.
	k.restart(t, server.Config{})
	if got, err := c.GetResource(ctx, "default/key/1"); err != nil || string(got) != secret {
		t.Fatalf("after restart: %q, %v", got, err)
	}
	if n := k.attests.Load(); n != 2 {
		t.Fatalf("attestations after restart = %d, want 2", n)
	}
	if strings.Contains(k.logs.String(), secret) {
		t.Fatalf("the secret reached the KBS log")
	}
}

func TestRSAKey(t *testing.T) {
	k := newKBS(t, server.Config{})
	p, _ := simulated.New(simulated.Options{Measurement: measurement(), HostData: hostData()})
	c, _ := client.New(client.Config{URL: k.srv.URL, Provider: p, KeyAlgorithm: protocol.AlgRSAOAE})
	if got, err := c.GetResource(context.Background(), "default/key/1"); err != nil || string(got) != secret {
		t.Fatalf("RSA-OAEP-256: %q, %v", got, err)
	}
}

func TestPolicyRejections(t *testing.T) {
	ctx := context.Background()
	k := newKBS(t, server.Config{})
	var otherM [48]byte
	var otherH [32]byte
	otherH[0] = 1
	for name, c := range map[string]*client.Client{
		"wrong measurement": guest(t, k.srv.URL, otherM, hostData()),
		"wrong host data":   guest(t, k.srv.URL, measurement(), otherH),
	} {
		_, err := c.GetResource(ctx, "default/key/1")
		var ke *client.Error
		if !errors.As(err, &ke) || ke.Status != http.StatusForbidden || !strings.HasSuffix(ke.Type, "PolicyDeny") {
			t.Errorf("%s: error = %v, want 403 PolicyDeny", name, err)
		}
	}
}

// rawSession performs /auth and returns the cookie-carrying client and nonce.
func rawSession(t *testing.T, url, version string) (*http.Client, string, int) {
	t.Helper()
	c := guestHTTP()
	body, _ := json.Marshal(protocol.Request{Version: version, Tee: "snp", ExtraParams: json.RawMessage(`""`)})
	resp, err := c.Post(url+"/kbs/v0/auth", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var ch protocol.Challenge
	json.NewDecoder(resp.Body).Decode(&ch)
	return c, ch.Nonce, resp.StatusCode
}

func attestBody(t *testing.T, nonce string, bindKey, sendKey protocol.JWK, tamper bool) []byte {
	t.Helper()
	p, _ := simulated.New(simulated.Options{Measurement: measurement(), HostData: hostData()})
	rd, _ := protocol.ReportData(nonce, bindKey, "")
	ev, err := p.GetEvidence(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	if tamper {
		ev.Report[0xC0] ^= 1
	}
	evJSON, _ := attestation.MarshalTrusteeSNP(ev)
	b, _ := json.Marshal(protocol.Attestation{InitData: json.RawMessage("null"), RuntimeData: protocol.RuntimeData{Nonce: nonce, TeePubKey: sendKey}, TeeEvidence: protocol.TeeEvidence{PrimaryEvidence: evJSON}})
	return b
}

func post(t *testing.T, c *http.Client, url string, body []byte) (int, protocol.ErrorInformation) {
	t.Helper()
	resp, err := c.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var ei protocol.ErrorInformation
	json.NewDecoder(resp.Body).Decode(&ei)
	return resp.StatusCode, ei
}

func TestProtocolRejections(t *testing.T) {
	k := newKBS(t, server.Config{})
	keyA, _ := teekey.New(protocol.AlgECDH)
	keyB, _ := teekey.New(protocol.AlgECDH)
	attest := k.srv.URL + "/kbs/v0/attest"

	if _, _, code := rawSession(t, k.srv.URL, "0.1.0"); code != http.StatusBadRequest {
		t.Errorf("wrong protocol version: %d, want 400", code)
	}

	c, nonce, _ := rawSession(t, k.srv.URL, protocol.Version)
	if code, ei := post(t, c, attest, attestBody(t, nonce, keyA.Public(), keyB.Public(), false)); code != http.StatusUnauthorized || !strings.Contains(ei.Detail, "REPORT_DATA") {
		t.Errorf("swapped tee-pubkey: %d %+v, want 401 REPORT_DATA", code, ei)
	}
	// The nonce is single-use, even after a failure.
	if code, _ := post(t, c, attest, attestBody(t, nonce, keyA.Public(), keyA.Public(), false)); code != http.StatusUnauthorized {
		t.Errorf("replayed nonce: %d, want 401", code)
	}

	c2, _, _ := rawSession(t, k.srv.URL, protocol.Version)
	if code, _ := post(t, c2, attest, attestBody(t, "foreign-nonce", keyA.Public(), keyA.Public(), false)); code != http.StatusUnauthorized {
		t.Errorf("foreign nonce: %d, want 401", code)
	}
	c3, n3, _ := rawSession(t, k.srv.URL, protocol.Version)
	if code, ei := post(t, c3, attest, attestBody(t, n3, keyA.Public(), keyA.Public(), true)); code != http.StatusUnauthorized || !strings.Contains(ei.Detail, "signature") {
		t.Errorf("tampered report: %d %+v, want 401 signature", code, ei)
	}
	c4, n4, _ := rawSession(t, k.srv.URL, protocol.Version)
	big := append([]byte(`{"x":"`), bytes.Repeat([]byte("a"), 2<<20)...)
	if code, _ := post(t, c4, attest, append(big, `"}`...)); code != http.StatusBadRequest {
		t.Errorf("oversized body: %d, want 400", code)
	}
	_ = n4
	// No session at all.
	if code, _ := post(t, guestHTTP(), attest, attestBody(t, "x", keyA.Public(), keyA.Public(), false)); code != http.StatusUnauthorized {
		t.Errorf("attest without session: %d, want 401", code)
	}
	if strings.Contains(k.logs.String(), nonce) {
		t.Error("a nonce reached the KBS log")
	}
}

func TestExpiredSession(t *testing.T) {
	k := newKBS(t, server.Config{SessionTTL: time.Millisecond})
	keyA, _ := teekey.New(protocol.AlgECDH)
	c, nonce, _ := rawSession(t, k.srv.URL, protocol.Version)
	time.Sleep(20 * time.Millisecond)
	if code, _ := post(t, c, k.srv.URL+"/kbs/v0/attest", attestBody(t, nonce, keyA.Public(), keyA.Public(), false)); code != http.StatusUnauthorized {
		t.Fatalf("expired session: %d, want 401", code)
	}
}

func TestResourcePathTraversal(t *testing.T) {
	k := newKBS(t, server.Config{})
	c := guest(t, k.srv.URL, measurement(), hostData())
	tok, err := c.Attest(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"default/key/..", "default/../../etc", "default%2Fkey/1/x", "default/key%2F1/x", "default/key/1/extra", "default/.key/1"} {
		req, _ := http.NewRequest(http.MethodGet, k.srv.URL+"/kbs/v0/resource/"+p, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Errorf("GET %s succeeded", p)
		}
	}
	if _, err := c.GetResource(context.Background(), "../x/y"); !errors.Is(err, protocol.ErrBadPath) {
		t.Errorf("client accepted a traversal path: %v", err)
	}
}

func TestAdminAPI(t *testing.T) {
	k := newKBS(t, server.Config{AdminKey: []byte("admin-key")})
	put := func(path, key string, body []byte) int {
		req, _ := http.NewRequest(http.MethodPost, k.srv.URL+path, bytes.NewReader(body))
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := put("/kbs/v0/resource/app/cfg/a", "wrong", []byte("x")); code != http.StatusUnauthorized {
		t.Fatalf("wrong admin key: %d", code)
	}
	if code := put("/kbs/v0/resource/app/cfg/a", "admin-key", []byte("new value")); code != http.StatusOK {
		t.Fatalf("set resource: %d", code)
	}
	c := guest(t, k.srv.URL, measurement(), hostData())
	if got, err := c.GetResource(context.Background(), "app/cfg/a"); err != nil || string(got) != "new value" {
		t.Fatalf("fetch of the new resource: %q %v", got, err)
	}
	deny := base64.StdEncoding.EncodeToString([]byte("package policy\ndefault allow := false\n"))
	if code := put("/kbs/v0/resource-policy", "admin-key", []byte(`{"policy":"`+deny+`"}`)); code != http.StatusOK {
		t.Fatalf("set policy: %d", code)
	}
	if _, err := c.GetResource(context.Background(), "app/cfg/a"); err == nil {
		t.Fatal("resource released after a deny-all policy")
	}
	if code := put("/kbs/v0/resource-policy", "admin-key", []byte(`{"policy":"`+base64.StdEncoding.EncodeToString([]byte("not rego {"))+`"}`)); code != http.StatusBadRequest {
		t.Fatalf("malformed policy: %d", code)
	}
}

func TestKBSDown(t *testing.T) {
	k := newKBS(t, server.Config{})
	url := k.srv.URL
	k.srv.Close()
	c := guest(t, url, measurement(), hostData())
	if _, err := c.GetResource(context.Background(), "default/key/1"); !errors.Is(err, client.ErrUnreachable) {
		t.Fatalf("KBS down: %v, want ErrUnreachable", err)
	}
}
