package client_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-containers/cocoon/attestation"
	"github.com/cocoon-containers/cocoon/attestation/simulated"
	"github.com/cocoon-containers/cocoon/kbs-client/client"
	"github.com/cocoon-containers/cocoon/kbs-client/kbstest"
	"github.com/cocoon-containers/cocoon/kbs-client/protocol"
	"github.com/cocoon-containers/cocoon/kbs-client/server"
	"github.com/cocoon-containers/cocoon/kbs-client/teekey"
)

const secret = kbstest.Secret

func measurement() [48]byte                               { return kbstest.Measurement() }
func hostData() [32]byte                                  { return kbstest.HostData() }
func newKBS(t *testing.T, cfg server.Config) *kbstest.KBS { return kbstest.Start(t, cfg) }
func guest(t *testing.T, url string, m [48]byte, h [32]byte) *client.Client {
	return kbstest.Guest(t, url, m, h)
}

func TestFlow(t *testing.T) {
	ctx := context.Background()
	k := newKBS(t, server.Config{})
	c := guest(t, k.Srv.URL, measurement(), hostData())
	for i := 0; i < 3; i++ {
		got, err := c.GetResource(ctx, "default/key/1")
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != secret {
			t.Fatalf("resource = %q", got)
		}
	}
	if n := k.Attests.Load(); n != 1 {
		t.Fatalf("attested %d times for 3 fetches, want 1 (token reuse)", n)
	}
	// After a KBS restart the old token is unknown: one re-attestation.
	k.Restart(t, server.Config{})
	if got, err := c.GetResource(ctx, "default/key/1"); err != nil || string(got) != secret {
		t.Fatalf("after restart: %q, %v", got, err)
	}
	if n := k.Attests.Load(); n != 2 {
		t.Fatalf("attestations after restart = %d, want 2", n)
	}
	if strings.Contains(k.Logs.String(), secret) {
		t.Fatalf("the secret reached the KBS log")
	}
}

func TestRSAKey(t *testing.T) {
	k := newKBS(t, server.Config{})
	p, _ := simulated.New(simulated.Options{Measurement: measurement(), HostData: hostData()})
	c, _ := client.New(client.Config{URL: k.Srv.URL, Provider: p, KeyAlgorithm: protocol.AlgRSAOAE})
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
		"wrong measurement": guest(t, k.Srv.URL, otherM, hostData()),
		"wrong host data":   guest(t, k.Srv.URL, measurement(), otherH),
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
	attest := k.Srv.URL + "/kbs/v0/attest"

	if _, _, code := rawSession(t, k.Srv.URL, "0.1.0"); code != http.StatusBadRequest {
		t.Errorf("wrong protocol version: %d, want 400", code)
	}

	c, nonce, _ := rawSession(t, k.Srv.URL, protocol.Version)
	if code, ei := post(t, c, attest, attestBody(t, nonce, keyA.Public(), keyB.Public(), false)); code != http.StatusUnauthorized || !strings.Contains(ei.Detail, "REPORT_DATA") {
		t.Errorf("swapped tee-pubkey: %d %+v, want 401 REPORT_DATA", code, ei)
	}
	// The nonce is single-use, even after a failure.
	if code, _ := post(t, c, attest, attestBody(t, nonce, keyA.Public(), keyA.Public(), false)); code != http.StatusUnauthorized {
		t.Errorf("replayed nonce: %d, want 401", code)
	}

	c2, _, _ := rawSession(t, k.Srv.URL, protocol.Version)
	if code, _ := post(t, c2, attest, attestBody(t, "foreign-nonce", keyA.Public(), keyA.Public(), false)); code != http.StatusUnauthorized {
		t.Errorf("foreign nonce: %d, want 401", code)
	}
	c3, n3, _ := rawSession(t, k.Srv.URL, protocol.Version)
	if code, ei := post(t, c3, attest, attestBody(t, n3, keyA.Public(), keyA.Public(), true)); code != http.StatusUnauthorized || !strings.Contains(ei.Detail, "signature") {
		t.Errorf("tampered report: %d %+v, want 401 signature", code, ei)
	}
	c4, n4, _ := rawSession(t, k.Srv.URL, protocol.Version)
	big := append([]byte(`{"x":"`), bytes.Repeat([]byte("a"), 2<<20)...)
	if code, _ := post(t, c4, attest, append(big, `"}`...)); code != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized body: %d, want 413", code)
	}
	_ = n4
	// No session at all.
	if code, _ := post(t, guestHTTP(), attest, attestBody(t, "x", keyA.Public(), keyA.Public(), false)); code != http.StatusUnauthorized {
		t.Errorf("attest without session: %d, want 401", code)
	}
	if strings.Contains(k.Logs.String(), nonce) {
		t.Error("a nonce reached the KBS log")
	}
}

func TestExpiredSession(t *testing.T) {
	k := newKBS(t, server.Config{SessionTTL: time.Millisecond})
	keyA, _ := teekey.New(protocol.AlgECDH)
	c, nonce, _ := rawSession(t, k.Srv.URL, protocol.Version)
	time.Sleep(20 * time.Millisecond)
	if code, _ := post(t, c, k.Srv.URL+"/kbs/v0/attest", attestBody(t, nonce, keyA.Public(), keyA.Public(), false)); code != http.StatusUnauthorized {
		t.Fatalf("expired session: %d, want 401", code)
	}
}

func TestResourcePathTraversal(t *testing.T) {
	k := newKBS(t, server.Config{})
	c := guest(t, k.Srv.URL, measurement(), hostData())
	tok, err := c.Attest(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"default/key/..", "default/../../etc", "default%2Fkey/1/x", "default/key%2F1/x", "default/key/1/extra", "default/.key/1"} {
		req, _ := http.NewRequest(http.MethodGet, k.Srv.URL+"/kbs/v0/resource/"+p, nil)
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
		req, _ := http.NewRequest(http.MethodPost, k.Srv.URL+path, bytes.NewReader(body))
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
	c := guest(t, k.Srv.URL, measurement(), hostData())
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
	url := k.Srv.URL
	k.Srv.Close()
	c := guest(t, url, measurement(), hostData())
	if _, err := c.GetResource(context.Background(), "default/key/1"); !errors.Is(err, client.ErrUnreachable) {
		t.Fatalf("KBS down: %v, want ErrUnreachable", err)
	}
}
