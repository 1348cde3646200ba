package client_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cocoon-containers/cocoon/attestation/simulated"
	"github.com/cocoon-containers/cocoon/kbs-client/client"
	"github.com/cocoon-containers/cocoon/kbs-client/kbstest"
	"github.com/cocoon-containers/cocoon/kbs-client/protocol"
	"github.com/cocoon-containers/cocoon/kbs-client/server"
)

func simGuest(t *testing.T, cfg client.Config) *client.Client {
	t.Helper()
	p, err := simulated.New(simulated.Options{Measurement: measurement(), HostData: hostData()})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Provider = p
	if cfg.Backoff == 0 {
		cfg.Backoff = time.Millisecond
	}
	c, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestTLSCABundleAndPin(t *testing.T) {
	k := kbstest.StartTLS(t, server.Config{})
	cert := k.Srv.Certificate()
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
	certPin, spkiPin := client.Pins(cert)
	spkiSum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	spkiB64 := "sha256/" + base64.StdEncoding.EncodeToString(spkiSum[:])
	wrong := strings.Repeat("ab", 32)

	good := map[string]client.Config{
		"CA bundle":               {CACert: caPEM},
		"certificate pin":         {CertPin: certPin},
		"public key pin":          {CertPin: spkiPin},
		"public key pin (base64)": {CertPin: spkiB64},
		"CA bundle and pin":       {CACert: caPEM, CertPin: certPin},
	}
	for name, cfg := range good {
		cfg.URL = k.Srv.URL
		got, err := simGuest(t, cfg).GetResource(context.Background(), "default/key/1")
		if err != nil || string(got) != secret {
			t.Errorf("%s: %q, %v", name, got, err)
		}
	}
	attests := k.Attests.Load()

	bad := map[string]struct {
		cfg     client.Config
		pinFail bool
	}{
		"wrong pin":               {client.Config{CertPin: wrong}, true},
		"CA bundle and wrong pin": {client.Config{CACert: caPEM, CertPin: wrong}, true},
		"system roots only":       {client.Config{}, false},
	}
	for name, b := range bad {
		b.cfg.URL = k.Srv.URL
		got, err := simGuest(t, b.cfg).GetResource(context.Background(), "default/key/1")
		if err == nil || got != nil {
			t.Errorf("%s: fetched %q", name, got)
			continue
		}
		if b.pinFail && !errors.Is(err, client.ErrPinMismatch) {
			t.Errorf("%s: %v, want ErrPinMismatch", name, err)
		}
		// A certificate we do not trust is not a network hiccup: no
		// retries, and not reported as an unreachable KBS.
		if errors.Is(err, client.ErrUnreachable) {
			t.Errorf("%s: %v reported as unreachable", name, err)
		}
	}
	if n := k.Attests.Load(); n != attests {
		t.Errorf("untrusted connections reached /attest %d times", n-attests)
	}
	if _, err := client.New(client.Config{URL: k.Srv.URL, CertPin: "not-a-pin"}); err == nil {
		t.Error("New accepted a malformed pin")
	}
	if _, err := client.New(client.Config{URL: k.Srv.URL, CACert: []byte("no PEM here")}); err == nil {
		t.Error("New accepted a CA bundle without certificates")
	}
}

func TestParsePin(t *testing.T) {
	var want [32]byte
	for i := range want {
		want[i] = byte(i)
	}
	hexPin := "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
	colons := "00:01:02:03:04:05:06:07:08:09:0A:0B:0C:0D:0E:0F:10:11:12:13:14:15:16:17:18:19:1A:1B:1C:1D:1E:1F"
	for _, s := range []string{hexPin, "sha256:" + hexPin, colons, "SHA256:" + colons,
		base64.StdEncoding.EncodeToString(want[:]), "sha256//" + base64.StdEncoding.EncodeToString(want[:]),
		base64.RawURLEncoding.EncodeToString(want[:])} {
		if got, err := client.ParsePin(s); err != nil || got != want {
			t.Errorf("ParsePin(%q) = %x, %v", s, got, err)
		}
	}
	for _, s := range []string{"", hexPin[:62], hexPin + "00", "zz" + hexPin[2:], base64.StdEncoding.EncodeToString(want[:31])} {
		if _, err := client.ParsePin(s); err == nil {
			t.Errorf("ParsePin(%q) accepted", s)
		}
	}
}

// front puts a proxy before the KBS; intercept may answer a request itself
// (returning true) or let it through.
func front(t *testing.T, kbsURL string, intercept func(w http.ResponseWriter, r *http.Request) bool) *httptest.Server {
	t.Helper()
	u, _ := url.Parse(kbsURL)
	proxy := httputil.NewSingleHostReverseProxy(u)
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !intercept(w, r) {
			proxy.ServeHTTP(w, r)
		}
	}))
	t.Cleanup(s.Close)
	return s
}

// drop closes the connection without an answer: a network error.
func drop(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err == nil {
		conn.Close()
	}
}

func TestRetriesNetworkErrors(t *testing.T) {
	k := newKBS(t, server.Config{})
	var auths atomic.Int32
	const drops = 2
	f := front(t, k.Srv.URL, func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/kbs/v0/auth" && auths.Add(1) <= drops {
			drop(w)
			return true
		}
		return false
	})
	got, err := simGuest(t, client.Config{URL: f.URL, Retries: drops + 1}).GetResource(context.Background(), "default/key/1")
	if err != nil || string(got) != secret {
		t.Fatalf("after %d dropped connections: %q, %v", drops, got, err)
	}
	if n := auths.Load(); n != drops+1 {
		t.Fatalf("/auth attempts = %d, want %d", n, drops+1)
	}

	// Always dropped: exactly Retries attempts, then ErrUnreachable.
	var attempts atomic.Int32
	down := front(t, k.Srv.URL, func(w http.ResponseWriter, r *http.Request) bool {
		attempts.Add(1)
		drop(w)
		return true
	})
	_, err = simGuest(t, client.Config{URL: down.URL, Retries: 4}).GetResource(context.Background(), "default/key/1")
	if !errors.Is(err, client.ErrUnreachable) {
		t.Fatalf("always dropped: %v, want ErrUnreachable", err)
	}
	if n := attempts.Load(); n != 4 {
		t.Fatalf("attempts = %d, want 4 (Retries)", n)
	}
}

func TestCancelDuringBackoff(t *testing.T) {
	k := newKBS(t, server.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	f := front(t, k.Srv.URL, func(w http.ResponseWriter, r *http.Request) bool {
		cancel()
		drop(w)
		return true
	})
	// The backoff is far longer than any test run: only the cancellation
	// can end the wait.
	c := simGuest(t, client.Config{URL: f.URL, Retries: 5, Backoff: 24 * time.Hour})
	_, err := c.GetResource(ctx, "default/key/1")
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v, want context.Canceled", err)
	}
}

func TestUnauthorizedReattestsOnce(t *testing.T) {
	k := newKBS(t, server.Config{})
	var gets atomic.Int32
	f := front(t, k.Srv.URL, func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodGet {
			gets.Add(1)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"type":"`+protocol.ErrorTypePrefix+`TokenVerificationFailed","detail":"token signed by another key"}`)
			return true
		}
		return false
	})
	_, err := simGuest(t, client.Config{URL: f.URL}).GetResource(context.Background(), "default/key/1")
	var ke *client.Error
	if !errors.As(err, &ke) || ke.Status != http.StatusUnauthorized {
		t.Fatalf("persistent 401: %v, want *client.Error 401", err)
	}
	if ke.Type != protocol.ErrorTypePrefix+"TokenVerificationFailed" || ke.Detail != "token signed by another key" {
		t.Fatalf("Trustee error not surfaced: %+v", ke)
	}
	if !strings.Contains(err.Error(), "TokenVerificationFailed") || !strings.Contains(err.Error(), "token signed by another key") {
		t.Fatalf("error text %q lacks the KBS's type and detail", err)
	}
	if a, g := k.Attests.Load(), gets.Load(); a != 2 || g != 2 {
		t.Fatalf("attestations %d, resource requests %d; want 2 and 2 (one re-attestation)", a, g)
	}
}

func TestKBSErrorsSurfaced(t *testing.T) {
	for name, tc := range map[string]struct {
		status     int
		body, want string
	}{
		"trustee JSON": {http.StatusBadRequest, `{"type":"` + protocol.ErrorTypePrefix + `ProtocolVersion","detail":"expected 0.4.0"}`, "ProtocolVersion: expected 0.4.0"},
		"plain text":   {http.StatusBadGateway, "upstream exploded\n", "upstream exploded"},
	} {
		kbs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(tc.status)
			io.WriteString(w, tc.body)
		}))
		_, err := simGuest(t, client.Config{URL: kbs.URL}).Attest(context.Background())
		kbs.Close()
		var ke *client.Error
		if !errors.As(err, &ke) || ke.Status != tc.status || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want status %d and %q", name, err, tc.status, tc.want)
		}
	}
}

func TestMalformedChallenge(t *testing.T) {
	for _, body := range []string{`{"nonce":""}`, `{"nonce":"a"} trailing`, `not json`, `{"nonce":"a\u0000b"}`} {
		kbs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, body)
		}))
		_, err := simGuest(t, client.Config{URL: kbs.URL}).Attest(context.Background())
		kbs.Close()
		if !errors.Is(err, protocol.ErrMalformed) {
			t.Errorf("challenge %s: %v, want ErrMalformed", body, err)
		}
	}
}
