package kbscli

import (
	"bytes"
	"context"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cocoon-containers/cocoon/attestation"
	"github.com/cocoon-containers/cocoon/attestation/simulated"
	"github.com/cocoon-containers/cocoon/kbs-client/kbstest"
)

func TestCommandsRoundTrip(t *testing.T) {
	if simulatedProvider == nil {
		simulatedProvider = func(h [32]byte, m [48]byte) (attestation.Provider, error) {
			return simulated.New(simulated.Options{HostData: h, Measurement: m})
		}
	}
	dir := t.TempDir()
	repo := filepath.Join(dir, "repo")
	if err := os.MkdirAll(repo, 0o700); err != nil {
		t.Fatal(err)
	}
	write := func(name, data string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	adminKey := write("admin.key", "admin-secret-key\n")
	wrongKey := write("wrong.key", "not-the-key")
	m, h := kbstest.Measurement(), kbstest.HostData()
	policy := write("policy.rego", kbstest.PolicyFor(m, h))
	secret := write("secret", "cli-secret-bytes")

	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	kbsLog := &kbstest.SyncBuffer{}
	go func() {
		done <- KBS(ctx, []string{"--listen", "127.0.0.1:0", "--repository", repo, "--admin-key", adminKey,
			"--policy", policy, "--trust-simulated-snp", "--insecure-http"}, kbsLog, ready)
	}()
	var addr string
	select {
	case addr = <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("kbs exited: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("kbs: %v", err)
		}
	})
	url := "http://" + addr
	sim := []string{"--url", url, "--tee", "simulated", "--host-data", hex.EncodeToString(h[:]), "--measurement", hex.EncodeToString(m[:])}

	run := func(args ...string) (string, error) {
		var out, errOut bytes.Buffer
		err := Client(ctx, args, &out, &errOut)
		return out.String(), err
	}
	if _, err := run("--url", url, "config", "--admin-key", wrongKey, "set-resource", "--path", "default/key/cli", "--resource-file", secret); err == nil {
		t.Fatal("set-resource with a wrong admin key: got nil error")
	}
	if _, err := run("--url", url, "config", "--admin-key", adminKey, "set-resource", "--path", "default/key/cli", "--resource-file", secret); err != nil {
		t.Fatalf("set-resource: %v", err)
	}
	tests := []struct {
		name    string
		args    []string
		want    string
		wantErr bool
	}{
		{name: "get resource", args: append(append([]string{}, sim...), "get-resource", "--path", "default/key/cli"), want: "cli-secret-bytes"},
		{name: "traversal path", args: append(append([]string{}, sim...), "get-resource", "--path", "default/../cli"), wantErr: true},
		{name: "missing resource", args: append(append([]string{}, sim...), "get-resource", "--path", "default/key/none"), wantErr: true},
		{name: "wrong measurement", args: []string{"--url", url, "--tee", "simulated", "--host-data", hex.EncodeToString(h[:]), "--measurement", strings.Repeat("00", 48), "get-resource", "--path", "default/key/cli"}, wantErr: true},
		{name: "short host data", args: []string{"--url", url, "--tee", "simulated", "--host-data", "abcd", "get-resource", "--path", "default/key/cli"}, wantErr: true},
		{name: "unknown tee", args: []string{"--url", url, "--tee", "tdx", "attest"}, wantErr: true},
		{name: "unknown command", args: []string{"--url", url, "frobnicate"}, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := run(tc.args...)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("got output %q, want an error", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
	tok, err := run(append(append([]string{}, sim...), "attest")...)
	if err != nil {
		t.Fatalf("attest: %v", err)
	}
	if strings.Count(strings.TrimSpace(tok), ".") != 2 {
		t.Fatalf("attest printed %q, want a JWT", tok)
	}
	if strings.Contains(kbsLog.String(), "cli-secret-bytes") || strings.Contains(kbsLog.String(), "admin-secret-key") {
		t.Fatal("kbs log holds the secret or the admin key")
	}
}

func TestKBSFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
	}{
		{name: "no repository", args: []string{"--insecure-http"}},
		{name: "neither tls nor insecure", args: []string{"--repository", t.TempDir()}},
		{name: "tls and insecure", args: []string{"--repository", t.TempDir(), "--tls-cert", "c", "--tls-key", "k", "--insecure-http"}},
		{name: "cert without key", args: []string{"--repository", t.TempDir(), "--tls-cert", "c"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			if err := KBS(context.Background(), tc.args, &stderr, nil); err == nil {
				t.Fatal("got nil error, want a flag error")
			}
		})
	}
}
