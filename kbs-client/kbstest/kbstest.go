// Package kbstest runs the reference KBS on loopback for tests, with one
// secret and a resource policy pinning a simulated guest's MEASUREMENT and
// HOST_DATA.
package kbstest

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cocoon-containers/cocoon/attestation/simulated"
	"github.com/cocoon-containers/cocoon/kbs-client/client"
	"github.com/cocoon-containers/cocoon/kbs-client/server"
)

// Secret is the value of default/key/1.
const Secret = "s3cr3t-value-that-must-not-leak"

// SyncBuffer collects logs from concurrent handlers.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// KBS is a running reference KBS.
type KBS struct {
	Srv     *httptest.Server
	Attests atomic.Int32
	Logs    *SyncBuffer
	Repo    string
	handler atomic.Pointer[http.Handler]

	mu        sync.Mutex
	sensitive []string
}

// Sensitive returns every nonce, session cookie and token the KBS has
// handed out so far: values no log may contain.
func (k *KBS) Sensitive() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.sensitive...)
}

// recorder keeps a copy of an answer's body next to writing it.
type recorder struct {
	http.ResponseWriter
	body bytes.Buffer
}

func (r *recorder) Write(p []byte) (int, error) {
	r.body.Write(p)
	return r.ResponseWriter.Write(p)
}

// remember notes the protocol secrets in an answer to /auth or /attest.
func (k *KBS) remember(rec *recorder) {
	var v struct {
		Nonce string `json:"nonce"`
		Token string `json:"token"`
	}
	json.Unmarshal(rec.body.Bytes(), &v)
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, s := range []string{v.Nonce, v.Token} {
		if s != "" {
			k.sensitive = append(k.sensitive, s)
		}
	}
	for _, c := range (&http.Response{Header: rec.Header()}).Cookies() {
		k.sensitive = append(k.sensitive, c.Value)
	}
}

// Measurement is the measurement the KBS policy expects.
func Measurement() [48]byte {
	var m [48]byte
	copy(m[:], bytes.Repeat([]byte{0x4d}, 48))
	return m
}

// HostData is the HOST_DATA the KBS policy expects.
func HostData() [32]byte {
	var h [32]byte
	copy(h[:], bytes.Repeat([]byte{0x48}, 32))
	return h
}

// PolicyFor releases resources only to a guest with m and h and no debug.
func PolicyFor(m [48]byte, h [32]byte) string {
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

// Start runs a KBS trusting simulated reports, over plain HTTP.
func Start(t testing.TB, cfg server.Config) *KBS {
	return start(t, cfg, false)
}

// StartTLS is Start over HTTPS with httptest's self-signed certificate
// (k.Srv.Certificate()).
func StartTLS(t testing.TB, cfg server.Config) *KBS {
	return start(t, cfg, true)
}

func start(t testing.TB, cfg server.Config, useTLS bool) *KBS {
	t.Helper()
	k := &KBS{Logs: &SyncBuffer{}, Repo: t.TempDir()}
	os.MkdirAll(filepath.Join(k.Repo, "default", "key"), 0o700)
	os.WriteFile(filepath.Join(k.Repo, "default", "key", "1"), []byte(Secret), 0o600)
	k.Restart(t, cfg)
	k.Srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := *k.handler.Load()
		switch r.URL.Path {
		case "/kbs/v0/attest":
			k.Attests.Add(1)
			fallthrough
		case "/kbs/v0/auth":
			rec := &recorder{ResponseWriter: w}
			h.ServeHTTP(rec, r)
			k.remember(rec)
		default:
			h.ServeHTTP(w, r)
		}
	}))
	if useTLS {
		k.Srv.StartTLS()
	} else {
		k.Srv.Start()
	}
	t.Cleanup(k.Srv.Close)
	return k
}

// Restart replaces the KBS (new signing key, no sessions).
func (k *KBS) Restart(t testing.TB, cfg server.Config) {
	t.Helper()
	cfg.Repository = k.Repo
	cfg.TrustSimulated = true
	cfg.Logger = slog.New(slog.NewTextHandler(k.Logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if cfg.ResourcePolicy == "" {
		cfg.ResourcePolicy = PolicyFor(Measurement(), HostData())
	}
	s, err := server.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	h := s.Handler()
	k.handler.Store(&h)
}

// Guest is a KBS client for a simulated guest with m and h.
func Guest(t testing.TB, url string, m [48]byte, h [32]byte) *client.Client {
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
