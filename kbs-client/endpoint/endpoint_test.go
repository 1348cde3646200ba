package endpoint_test

import (
	"context"
	"crypto/sha512"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-containers/cocoon/attestation"
	"github.com/cocoon-containers/cocoon/attestation/simulated"
	"github.com/cocoon-containers/cocoon/kbs-client/client"
	"github.com/cocoon-containers/cocoon/kbs-client/endpoint"
	"github.com/cocoon-containers/cocoon/kbs-client/kbstest"
	"github.com/cocoon-containers/cocoon/kbs-client/server"
)

type guestEnv struct {
	url  string
	logs *kbstest.SyncBuffer
}

// startEndpoint serves the workload endpoint on 127.0.0.1:0 for a
// simulated guest with m and h, talking to kbsURL.
func startEndpoint(t *testing.T, kbsURL string, m [48]byte, h [32]byte) guestEnv {
	t.Helper()
	p, err := simulated.New(simulated.Options{Measurement: m, HostData: h})
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(client.Config{URL: kbsURL, Provider: p, Backoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	logs := &kbstest.SyncBuffer{}
	s := endpoint.New(endpoint.Config{KBS: c, Provider: p, Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	l, err := endpoint.Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	t.Cleanup(func() { cancel(); <-done })
	return guestEnv{url: "http://" + l.Addr().String(), logs: logs}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestWorkloadGetsSecret(t *testing.T) {
	k := kbstest.Start(t, server.Config{})
	g := startEndpoint(t, k.Srv.URL, kbstest.Measurement(), kbstest.HostData())
	code, body := get(t, g.url+"/cdh/resource/default/key/1")
	if code != http.StatusOK || body != kbstest.Secret {
		t.Fatalf("resource: %d %q", code, body)
	}
	code, tok := get(t, g.url+"/aa/token?token_type=kbs")
	if code != http.StatusOK || !strings.Contains(tok, `"token":"`) {
		t.Fatalf("token: %d %q", code, tok)
	}
	if code, _ := get(t, g.url+"/aa/token?token_type=other"); code != http.StatusBadRequest {
		t.Fatalf("token_type other: %d", code)
	}
	// Nothing secret in any log: the secret, the token, the session nonce.
	all := g.logs.String() + k.Logs.String()
	token := strings.TrimSuffix(strings.TrimPrefix(tok, `{"token":"`), `"}`)
	for name, v := range map[string]string{"secret": kbstest.Secret, "token": token} {
		if strings.Contains(all, v) {
			t.Errorf("the %s reached a log", name)
		}
	}
	if !strings.Contains(all, "resource delivered") {
		t.Errorf("no log of the delivery at all: %s", all)
	}
}

func TestEvidenceBindsRuntimeData(t *testing.T) {
	k := kbstest.Start(t, server.Config{})
	g := startEndpoint(t, k.Srv.URL, kbstest.Measurement(), kbstest.HostData())
	code, body := get(t, g.url+"/aa/evidence?runtime_data=hello-from-workload")
	if code != http.StatusOK {
		t.Fatalf("evidence: %d %s", code, body)
	}
	ev, err := attestation.ParseTrusteeSNP([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	var rd [64]byte
	sum := sha512.Sum384([]byte("hello-from-workload"))
	copy(rd[:], sum[:])
	if _, err := attestation.Verify(context.Background(), ev, attestation.VerifyOptions{ReportData: &rd, TrustSimulated: true}); err != nil {
		t.Fatalf("evidence does not verify over the runtime data: %v", err)
	}
}

func TestErrors(t *testing.T) {
	k := kbstest.Start(t, server.Config{})
	var otherH [32]byte
	tampered := startEndpoint(t, k.Srv.URL, kbstest.Measurement(), otherH)
	code, body := get(t, tampered.url+"/cdh/resource/default/key/1")
	if code != http.StatusForbidden || !strings.Contains(body, "denied by the KBS") || strings.Contains(body, kbstest.Secret) {
		t.Fatalf("modified policy (other HOST_DATA): %d %q, want 403", code, body)
	}
	good := startEndpoint(t, k.Srv.URL, kbstest.Measurement(), kbstest.HostData())
	for _, p := range []string{"/cdh/resource/default/key", "/cdh/resource/default/../etc/x", "/cdh/resource/default%2Fkey/1/2"} {
		if code, _ := get(t, good.url+p); code != http.StatusBadRequest && code != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 400", p, code)
		}
	}
	if code, _ := get(t, good.url+"/cdh/resource/default/key/missing"); code != http.StatusNotFound {
		t.Errorf("missing resource: %d, want 404", code)
	}
	k.Srv.Close()
	down := startEndpoint(t, k.Srv.URL, kbstest.Measurement(), kbstest.HostData())
	code, body = get(t, down.url+"/cdh/resource/default/key/1")
	if code != http.StatusServiceUnavailable {
		t.Fatalf("KBS down: %d %q, want 503", code, body)
	}
	if strings.Contains(down.logs.String(), kbstest.Secret) {
		t.Fatal("secret in the log")
	}
}

func TestLoopbackOnly(t *testing.T) {
	if _, err := endpoint.Listen(context.Background(), "0.0.0.0:0"); !errors.Is(err, endpoint.ErrNotLoopback) {
		t.Fatalf("Listen on 0.0.0.0 = %v, want ErrNotLoopback", err)
	}
	h := endpoint.New(endpoint.Config{}).Handler()
	req := httptest.NewRequest(http.MethodGet, "/aa/token?token_type=kbs", nil)
	req.RemoteAddr = "192.0.2.7:4000"
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusForbidden {
		t.Fatalf("remote peer: %d, want 403", rec.Code)
	}
}
