package endpoint_test

import (
	"context"
	"encoding/pem"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/cocoon-containers/cocoon/attestation/simulated"
	"github.com/cocoon-containers/cocoon/kbs-client/client"
	"github.com/cocoon-containers/cocoon/kbs-client/endpoint"
	"github.com/cocoon-containers/cocoon/kbs-client/kbstest"
	"github.com/cocoon-containers/cocoon/kbs-client/server"
)

// run starts endpoint.Run with o on a free loopback port and returns its
// base URL; the endpoint stops, and Run's result is checked, at cleanup.
func run(t *testing.T, o endpoint.Options) string {
	t.Helper()
	if o.Addr == "" {
		o.Addr = "127.0.0.1:0"
	}
	addr := make(chan net.Addr, 1)
	o.Ready = func(a net.Addr) { addr <- a }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- endpoint.Run(ctx, o) }()
	select {
	case a := <-addr:
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run after cancel: %v", err)
			}
		})
		return "http://" + a.String()
	case err := <-done:
		cancel()
		t.Fatalf("Run: %v", err)
	}
	return ""
}

func TestRunRefusesBadOptions(t *testing.T) {
	p, _ := simulated.New(simulated.Options{})
	ctx := context.Background()
	if err := endpoint.Run(ctx, endpoint.Options{Provider: p}); !errors.Is(err, endpoint.ErrNoKBS) {
		t.Errorf("no URL: %v, want ErrNoKBS", err)
	}
	if err := endpoint.Run(ctx, endpoint.Options{KBSURL: "http://127.0.0.1:1"}); err == nil {
		t.Error("no provider accepted")
	}
	if err := endpoint.Run(ctx, endpoint.Options{KBSURL: "http://127.0.0.1:1", Provider: p, Addr: "0.0.0.0:0"}); !errors.Is(err, endpoint.ErrNotLoopback) {
		t.Errorf("0.0.0.0: %v, want ErrNotLoopback", err)
	}
	if err := endpoint.Run(ctx, endpoint.Options{KBSURL: "https://127.0.0.1:1", Provider: p, Addr: "127.0.0.1:0", CACertFile: "/nonexistent/ca.pem"}); err == nil {
		t.Error("a missing CA file accepted")
	}
	if err := endpoint.Run(ctx, endpoint.Options{KBSURL: "https://127.0.0.1:1", Provider: p, Addr: "127.0.0.1:0", CertPin: "xyz"}); err == nil {
		t.Error("a malformed pin accepted")
	}
}

func TestFromConfig(t *testing.T) {
	p, _ := simulated.New(simulated.Options{})
	pin := strings.Repeat("0f", 32)
	cdh := "socket = \"unix:///run/cdh.sock\"\n[kbc]\nname = \"cc_kbc\"\nurl = \"https://kbs.cdh:8080\"\nkbs_cert = \"\"\"\nCDH-PEM\n\"\"\"\nkbs_cert_pin = \"" + pin + "\"\n"
	aa := "[token_configs]\n[token_configs.coco_as]\nurl = \"http://as\"\n[token_configs.kbs]\nurl = \"https://kbs.aa:8080\"\ncert = \"AA-PEM\"\n"
	for name, tc := range map[string]struct {
		cmdline  string
		initdata map[string]string
		url, ca  string
		pin      string
	}{
		"command line only":    {"http://kbs.cmdline:8080", nil, "http://kbs.cmdline:8080", "", ""},
		"aa.toml over cmdline": {"http://kbs.cmdline:8080", map[string]string{"aa.toml": aa}, "https://kbs.aa:8080", "AA-PEM", ""},
		"cdh.toml first":       {"http://kbs.cmdline:8080", map[string]string{"aa.toml": aa, "cdh.toml": cdh}, "https://kbs.cdh:8080", "CDH-PEM\n", pin},
		"other files ignored":  {"http://kbs.cmdline:8080", map[string]string{"policy.rego": "package agent_policy"}, "http://kbs.cmdline:8080", "", ""},
		"nothing":              {"", nil, "", "", ""},
	} {
		o, err := endpoint.FromConfig(tc.cmdline, tc.initdata, p, nil)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if o.KBSURL != tc.url || string(o.CACert) != tc.ca || o.CertPin != tc.pin || o.Provider != p {
			t.Errorf("%s: url %q ca %q pin %q, want %q %q %q", name, o.KBSURL, o.CACert, o.CertPin, tc.url, tc.ca, tc.pin)
		}
	}
	for name, data := range map[string]map[string]string{
		"other kbc":     {"cdh.toml": "[kbc]\nname = \"offline_fs_kbc\"\n"},
		"bad toml":      {"cdh.toml": "[kbc\n"},
		"bad aa toml":   {"aa.toml": "token_configs = 1 2\n"},
		"malformed pin": {"cdh.toml": "[kbc]\nurl = \"https://k\"\nkbs_cert_pin = \"nope\"\n"},
	} {
		if _, err := endpoint.FromConfig("", data, p, nil); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
}

// TestFullRunLeaksNothing runs the whole path the agent takes — options
// from initdata, Run, a TLS KBS reached through a certificate pin — through
// every kind of request and outcome, including a KBS restart, and then
// scans every log line of the endpoint and the KBS for the secret and for
// every nonce, session cookie and token that crossed the wire.
func TestFullRunLeaksNothing(t *testing.T) {
	k := kbstest.StartTLS(t, server.Config{AdminKey: []byte("admin-key-value")})
	certPin, _ := client.Pins(k.Srv.Certificate())
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: k.Srv.Certificate().Raw})
	p, err := simulated.New(simulated.Options{Measurement: kbstest.Measurement(), HostData: kbstest.HostData()})
	if err != nil {
		t.Fatal(err)
	}
	logs := &kbstest.SyncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cdh := "[kbc]\nname = \"cc_kbc\"\nurl = \"" + k.Srv.URL + "\"\nkbs_cert = '''\n" + string(caPEM) + "'''\nkbs_cert_pin = \"" + certPin + "\"\n"
	o, err := endpoint.FromConfig("http://unused.invalid", map[string]string{"cdh.toml": cdh}, p, log)
	if err != nil {
		t.Fatal(err)
	}
	url := run(t, o)

	var tokens []string
	for round := 0; round < 2; round++ {
		if code, body := get(t, url+"/cdh/resource/default/key/1"); code != http.StatusOK || body != kbstest.Secret {
			t.Fatalf("round %d: resource %d %q", round, code, body)
		}
		code, tok := get(t, url+"/aa/token?token_type=kbs")
		if code != http.StatusOK {
			t.Fatalf("round %d: token %d", round, code)
		}
		tokens = append(tokens, strings.TrimSuffix(strings.TrimPrefix(tok, `{"token":"`), `"}`))
		if code, _ := get(t, url+"/aa/evidence?runtime_data=workload-nonce"); code != http.StatusOK {
			t.Fatalf("round %d: evidence %d", round, code)
		}
		for _, path := range []string{"default/key/missing", "default/../x", "other/key/1"} {
			if code, _ := get(t, url+"/cdh/resource/"+path); code == http.StatusOK {
				t.Fatalf("round %d: %s answered 200", round, path)
			}
		}
		// A restarted KBS forgets sessions and its token key: the next
		// round re-attests.
		k.Restart(t, server.Config{AdminKey: []byte("admin-key-value")})
	}
	if n := k.Attests.Load(); n != 2 {
		t.Fatalf("attestations = %d, want 2 (one per KBS lifetime)", n)
	}
	if tokens[0] == tokens[1] {
		t.Fatal("the token did not change across the KBS restart")
	}

	all := logs.String() + k.Logs.String()
	if !strings.Contains(logs.String(), "resource delivered") || !strings.Contains(k.Logs.String(), "guest attested") {
		t.Fatalf("the logs are missing the events they should record:\n%s", all)
	}
	watch := map[string]string{"secret": kbstest.Secret, "admin key": "admin-key-value"}
	for i, v := range append(k.Sensitive(), tokens...) {
		watch["protocol value "+string(rune('a'+i))] = v
	}
	if len(watch) < 2+2+2+2 {
		t.Fatalf("only %d values recorded: nonces, cookies and tokens are missing", len(watch))
	}
	for name, v := range watch {
		if v == "" {
			continue
		}
		if strings.Contains(all, v) {
			t.Errorf("the %s reached a log", name)
		}
		// JWT parts and cookie prefixes are secrets too when long enough.
		for _, part := range strings.Split(v, ".") {
			if len(part) >= 16 && strings.Contains(all, part) {
				t.Errorf("part of the %s reached a log", name)
			}
		}
	}
}
