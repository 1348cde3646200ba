package imagetest

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/containers/ocicrypt/config"
	"github.com/containers/ocicrypt/keywrap/jwe"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Skopeo is Debian's skopeo, which make deps installs.
const Skopeo = "/usr/bin/skopeo"

// Annotations of an encrypted layer.
const (
	annotationJWE      = "org.opencontainers.image.enc.keys.jwe"
	annotationProvider = "org.opencontainers.image.enc.keys.provider.attestation-agent"
)

var (
	providerOnce sync.Once
	providerDir  string
	providerPath string
	providerErr  error
)

// KeyProvider builds image/decrypt's test key provider (ocicrypt's "cmd"
// key provider protocol, keywrap for the attestation-agent provider) once
// per test binary; RemoveBuilt removes it.
func KeyProvider(tb testing.TB) string {
	tb.Helper()
	providerOnce.Do(func() {
		if providerDir, providerErr = os.MkdirTemp("", "imagetest-keyprovider-"); providerErr != nil {
			return
		}
		providerPath = filepath.Join(providerDir, "testkeyprovider")
		out, err := exec.Command("go", "build", "-o", providerPath,
			"github.com/cocoon-containers/cocoon/image/decrypt/internal/testkeyprovider").CombinedOutput()
		if err != nil {
			providerErr = fmt.Errorf("go build testkeyprovider: %v\n%s", err, out)
		}
	})
	if providerErr != nil {
		tb.Fatal(providerErr)
	}
	return providerPath
}

// RemoveBuilt removes what KeyProvider built (call it from TestMain).
func RemoveBuilt() {
	if providerDir != "" {
		os.RemoveAll(providerDir)
	}
}

// EncryptForKBS has skopeo encrypt every layer of the image at plainRef
// into encRef (both on reg), then gives each layer an attestation-agent
// key provider packet: the layer's private options wrapped with AES-256-GCM
// under key, which the KBS holds as kid. It returns the encrypted image's
// manifest.
//
// Debian's skopeo 1.9.3 is built with ocicrypt 1.0.3, which predates key
// providers ("provider:..." is refused as an unknown protocol). So skopeo
// encrypts for a JWE recipient whose private key this function holds; it
// then does what coco-keyprovider does inside a newer skopeo: it hands the
// layer's private options (unwrapped from the JWE) to the key provider
// over ocicrypt's keywrap protocol and puts the packet it returns in the
// layer's attestation-agent annotation, in place of the JWE one. Layer
// blobs, media types and public options stay as skopeo wrote them.
func EncryptForKBS(tb testing.TB, reg *Registry, plainRef, encRef, kid string, key []byte) *v1.Manifest {
	tb.Helper()
	if _, err := os.Stat(Skopeo); err != nil {
		tb.Fatalf("skopeo is needed (Debian package skopeo, make deps): %v", err)
	}
	dir := tb.TempDir()
	keyFile := filepath.Join(dir, "kek")
	if err := os.WriteFile(keyFile, key, 0o600); err != nil {
		tb.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		tb.Fatal(err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	if err != nil {
		tb.Fatal(err)
	}
	pubFile := filepath.Join(dir, "recipient.pub.pem")
	if err := os.WriteFile(pubFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o600); err != nil {
		tb.Fatal(err)
	}
	privPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)})
	policy := filepath.Join(dir, "policy.json")
	if err := os.WriteFile(policy, []byte(`{"default":[{"type":"insecureAcceptAnything"}]}`), 0o600); err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(Skopeo, "--policy", policy, "copy",
		"--src-tls-verify=false", "--dest-tls-verify=false",
		"--format", "oci",
		"--encryption-key", "jwe:"+pubFile,
		"docker://"+plainRef, "docker://"+encRef)
	cmd.Env = append(os.Environ(), "HOME="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("skopeo copy: %v\n%s", err, out)
	}

	ref, err := name.ParseReference(encRef, name.Insecure)
	if err != nil {
		tb.Fatal(err)
	}
	desc, err := remote.Get(ref)
	if err != nil {
		tb.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(desc.Manifest, &m); err != nil {
		tb.Fatal(err)
	}
	layers, _ := m["layers"].([]any)
	if len(layers) == 0 {
		tb.Fatalf("skopeo wrote a manifest without layers: %s", desc.Manifest)
	}
	for i, l := range layers {
		lm := l.(map[string]any)
		anns, _ := lm["annotations"].(map[string]any)
		jweAnn, _ := anns[annotationJWE].(string)
		if jweAnn == "" {
			tb.Fatalf("skopeo left layer %d without %s: %v", i, annotationJWE, anns)
		}
		jweBytes, err := base64.StdEncoding.DecodeString(jweAnn)
		if err != nil {
			tb.Fatal(err)
		}
		optsData, err := jwe.NewKeyWrapper().UnwrapKey(&config.DecryptConfig{Parameters: map[string][][]byte{
			"privkeys": {privPEM}, "privkeys-passwords": {nil},
		}}, jweBytes)
		if err != nil {
			tb.Fatalf("layer %d: opening skopeo's JWE: %v", i, err)
		}
		delete(anns, annotationJWE)
		anns[annotationProvider] = base64.StdEncoding.EncodeToString(ProviderWrap(tb, kid, keyFile, optsData))
	}
	raw, err := json.Marshal(m)
	if err != nil {
		tb.Fatal(err)
	}
	if err := remote.Put(ref, RawManifest{raw, types.MediaType(desc.MediaType)}); err != nil {
		tb.Fatal(err)
	}
	mf, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		tb.Fatal(err)
	}
	return mf
}

// ProviderWrap runs the key provider as ocicrypt does for "keywrap" and
// returns its annotation (the JSON packet).
func ProviderWrap(tb testing.TB, kid, keyFile string, optsData []byte) []byte {
	tb.Helper()
	req, err := json.Marshal(map[string]any{
		"op": "keywrap",
		"keywrapparams": map[string]any{
			"ec":       config.EncryptConfig{Parameters: map[string][][]byte{"attestation-agent": {[]byte("keyid=" + kid + "::keypath=" + keyFile)}}},
			"optsdata": optsData,
		},
	})
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(KeyProvider(tb))
	cmd.Stdin = bytes.NewReader(req)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		tb.Fatalf("key provider: %v: %s", err, stderr.String())
	}
	var resp struct {
		KeyWrapResults struct {
			Annotation []byte `json:"annotation"`
		} `json:"keywrapresults"`
	}
	if err := json.Unmarshal(out, &resp); err != nil {
		tb.Fatal(err)
	}
	if len(resp.KeyWrapResults.Annotation) == 0 {
		tb.Fatalf("key provider answered without an annotation: %s", out)
	}
	return resp.KeyWrapResults.Annotation
}

// RawManifest lets remote.Put write manifest bytes as they are.
type RawManifest struct {
	B  []byte
	MT types.MediaType
}

func (r RawManifest) RawManifest() ([]byte, error)        { return r.B, nil }
func (r RawManifest) MediaType() (types.MediaType, error) { return r.MT, nil }
