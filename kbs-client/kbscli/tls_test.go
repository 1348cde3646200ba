package kbscli

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-containers/cocoon/attestation"
	"github.com/cocoon-containers/cocoon/attestation/simulated"
	"github.com/cocoon-containers/cocoon/kbs-client/client"
	"github.com/cocoon-containers/cocoon/kbs-client/kbstest"
)

// selfSigned writes a self-signed certificate for 127.0.0.1 and its key.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string, cert *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "cocoon-kbs test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ = x509.ParseCertificate(der)
	kder, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile = filepath.Join(dir, "kbs.crt"), filepath.Join(dir, "kbs.key")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	return certFile, keyFile, cert
}

func TestCommandsOverTLS(t *testing.T) {
	if simulatedProvider == nil {
		simulatedProvider = func(h [32]byte, m [48]byte) (attestation.Provider, error) {
			return simulated.New(simulated.Options{HostData: h, Measurement: m})
		}
	}
	dir := t.TempDir()
	repo := filepath.Join(dir, "repo", "default", "key")
	os.MkdirAll(repo, 0o700)
	os.WriteFile(filepath.Join(repo, "tls"), []byte("tls-secret"), 0o600)
	m, h := kbstest.Measurement(), kbstest.HostData()
	policy := filepath.Join(dir, "policy.rego")
	os.WriteFile(policy, []byte(kbstest.PolicyFor(m, h)), 0o600)
	// Only guests without debug attest at all.
	attPolicy := filepath.Join(dir, "attestation.rego")
	os.WriteFile(attPolicy, []byte("package policy\nimport rego.v1\ndefault allow := false\nallow if not input.claims.policy.debug\n"), 0o600)
	certFile, keyFile, cert := selfSigned(t, dir)

	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- KBS(ctx, []string{"--listen", "127.0.0.1:0", "--repository", filepath.Join(dir, "repo"), "--policy", policy,
			"--attestation-policy", attPolicy, "--trust-simulated-snp", "--tls-cert", certFile, "--tls-key", keyFile}, &kbstest.SyncBuffer{}, ready)
	}()
	var addr string
	select {
	case addr = <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("kbs exited: %v", err)
	}
	t.Cleanup(func() { cancel(); <-done })
	url := "https://" + addr
	certPin, spkiPin := client.Pins(cert)
	sim := []string{"--tee", "simulated", "--host-data", hex.EncodeToString(h[:]), "--measurement", hex.EncodeToString(m[:])}
	get := append(sim, "get-resource", "--path", "default/key/tls")
	run := func(args ...string) (string, error) {
		var out, errOut bytes.Buffer
		err := Client(ctx, append([]string{"--url", url}, args...), &out, &errOut)
		return out.String(), err
	}
	for name, trust := range map[string][]string{
		"CA file":    {"--cert-file", certFile},
		"cert pin":   {"--cert-pin", certPin},
		"public key": {"--cert-pin", "sha256:" + spkiPin},
	} {
		if got, err := run(append(trust, get...)...); err != nil || got != "tls-secret" {
			t.Errorf("%s: %q, %v", name, got, err)
		}
	}
	for name, trust := range map[string][]string{
		"no trust":  nil,
		"wrong pin": {"--cert-pin", strings.Repeat("00", 32)},
	} {
		if got, err := run(append(trust, get...)...); err == nil || got != "" {
			t.Errorf("%s: %q, %v; want an error and no output", name, got, err)
		}
	}
	if _, err := run(append([]string{"--cert-file", certFile}, append(sim, "attest")...)...); err != nil {
		t.Errorf("attest over TLS: %v", err)
	}
}
