package guestpull

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/cocoon-containers/cocoon/attestation/simulated"
	"github.com/cocoon-containers/cocoon/image/imagetest"
	"github.com/cocoon-containers/cocoon/image/pull"
	"github.com/cocoon-containers/cocoon/kbs-client/client"
	"github.com/cocoon-containers/cocoon/kbs-client/kbstest"
	"github.com/cocoon-containers/cocoon/kbs-client/server"
)

// kbsClient attests to k as a simulated guest with the given HOST_DATA.
func kbsClient(t *testing.T, k *kbstest.KBS, hostData [32]byte) *client.Client {
	t.Helper()
	p, err := simulated.New(simulated.Options{HostData: hostData, Measurement: kbstest.Measurement()})
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(client.Config{URL: k.Srv.URL, Provider: p, Retries: 1})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func putResource(t *testing.T, k *kbstest.KBS, path string, b []byte) {
	t.Helper()
	p := filepath.Join(k.Repo, filepath.FromSlash(path))
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func newService(t *testing.T, cfg Config) (*Service, *bytes.Buffer) {
	t.Helper()
	var logs bytes.Buffer
	cfg.WorkDir = t.TempDir()
	cfg.AllowPlainHTTPLoopback = true
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s, &logs
}

// TestSignaturePolicyFromKBS: the policy and the cosign key it names both
// come from the KBS after attestation. The signed image is pulled, an
// unsigned one in the same repository is refused, and nothing is written.
func TestSignaturePolicyFromKBS(t *testing.T) {
	reg := imagetest.NewRegistry(t)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	signed := imagetest.Image(t, imagetest.Layer(t, imagetest.Entry{Name: "hello", Body: "signed"}))
	d := imagetest.Push(t, reg.Ref("app:signed"), signed)
	imagetest.Sign(t, reg.Host+"/app", d, imagetest.SimpleSigningPayload(reg.Ref("app:signed"), d), key)
	imagetest.Push(t, reg.Ref("app:unsigned"), imagetest.Image(t, imagetest.Layer(t, imagetest.Entry{Name: "hello", Body: "unsigned"})))

	k := kbstest.Start(t, server.Config{})
	putResource(t, k, "default/cosign-key/1", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	putResource(t, k, "default/security-policy/test", []byte(`{
		"default": [{"type": "reject"}],
		"transports": {"docker": {"`+reg.Host+`/app": [{"type": "sigstoreSigned", "keyPath": "kbs:///default/cosign-key/1"}]}}}`))
	s, _ := newService(t, Config{PolicyURI: "kbs:///default/security-policy/test", KBS: kbsClient(t, k, kbstest.HostData())})

	ok := filepath.Join(t.TempDir(), "ok")
	if err := s.PullImage(context.Background(), reg.Ref("app:signed"), ok); err != nil {
		t.Fatalf("signed image: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(ok, "hello")); string(b) != "signed" {
		t.Fatalf("rootfs hello = %q", b)
	}
	bad := filepath.Join(t.TempDir(), "bad")
	err = s.PullImage(context.Background(), reg.Ref("app:unsigned"), bad)
	if err == nil || !strings.Contains(err.Error(), "denied") {
		t.Fatalf("unsigned image: %v, want a denial", err)
	}
	if _, err := os.Stat(bad); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("denied image left %s: %v", bad, err)
	}
	// Another repository falls under "default": reject.
	imagetest.Push(t, reg.Ref("other:1"), signed)
	err = s.PullImage(context.Background(), reg.Ref("other:1"), filepath.Join(t.TempDir(), "x"))
	if err == nil || !strings.Contains(err.Error(), "denied") {
		t.Fatalf("image under the default reject: %v", err)
	}
	if n := k.Attests.Load(); n != 1 {
		t.Errorf("%d attestations for one policy and one key, want 1", n)
	}
}

// TestPolicyUnavailableFailsClosed: when the KBS will not release the
// policy (the guest's HOST_DATA is not the one its resource policy wants),
// no image is pulled, the error says why, and a later pull asks again.
func TestPolicyUnavailableFailsClosed(t *testing.T) {
	reg := imagetest.NewRegistry(t)
	imagetest.Push(t, reg.Ref("app:1"), imagetest.Image(t, imagetest.Layer(t, imagetest.Entry{Name: "a", Body: "a"})))
	k := kbstest.Start(t, server.Config{})
	putResource(t, k, "default/security-policy/test", []byte(`{"default": [{"type": "insecureAcceptAnything"}]}`))
	var other [32]byte
	other[0] = 1
	kc := &countingKBS{r: kbsClient(t, k, other)}
	s, _ := newService(t, Config{PolicyURI: "kbs:///default/security-policy/test", KBS: kc})
	before := reg.BlobGets.Load()
	for i := 0; i < 2; i++ {
		dest := filepath.Join(t.TempDir(), "r")
		err := s.PullImage(context.Background(), reg.Ref("app:1"), dest)
		if err == nil || !strings.Contains(err.Error(), "image signature policy: kbs:///default/security-policy/test") {
			t.Fatalf("pull %d: %v, want the policy fetch failure", i, err)
		}
		if _, err := os.Stat(dest); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("pull %d left %s", i, dest)
		}
	}
	if n := reg.BlobGets.Load() - before; n != 0 {
		t.Errorf("%d blobs fetched without a policy", n)
	}
	if kc.n != 2 {
		t.Errorf("%d policy fetches for two pulls: the failure was remembered instead of retried", kc.n)
	}

	// No KBS at all: a kbs:/// URI cannot be resolved.
	s2, _ := newService(t, Config{PolicyURI: "kbs:///default/security-policy/test"})
	if err := s2.PullImage(context.Background(), reg.Ref("app:1"), filepath.Join(t.TempDir(), "r")); !errors.Is(err, ErrNoKBS) {
		t.Fatalf("no KBS: %v", err)
	}
}

// TestCredentialsFromKBS: a registry that wants basic auth is pulled with
// credentials released by the KBS, which never appear in the log or in
// errors; without them the pull is refused.
func TestCredentialsFromKBS(t *testing.T) {
	reg := imagetest.NewRegistry(t)
	imagetest.Push(t, reg.Ref("priv:1"), imagetest.Image(t, imagetest.Layer(t, imagetest.Entry{Name: "p", Body: "private"})))
	const user, pass = "robot", "pa55-from-kbs"
	front := &http.Transport{}
	tr := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if r.URL.Scheme == "https" {
			return front.RoundTrip(r)
		}
		if u, p, ok := r.BasicAuth(); ok && u == user && p == pass {
			return front.RoundTrip(r)
		}
		return &http.Response{StatusCode: 401, Header: http.Header{"Www-Authenticate": {`Basic realm="t"`}},
			Body: http.NoBody, Request: r}, nil
	})
	k := kbstest.Start(t, server.Config{})
	auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
	putResource(t, k, "default/credential/registry", []byte(`{"auths": {"`+reg.Host+`": {"auth": "`+auth+`"}}}`))

	anon, _ := newService(t, Config{Transport: tr})
	if err := anon.PullImage(context.Background(), reg.Ref("priv:1"), filepath.Join(t.TempDir(), "r")); err == nil {
		t.Fatal("pulled a private image without credentials")
	}
	s, logs := newService(t, Config{AuthURI: "kbs:///default/credential/registry", Transport: tr, KBS: kbsClient(t, k, kbstest.HostData())})
	dest := filepath.Join(t.TempDir(), "r")
	if err := s.PullImage(context.Background(), reg.Ref("priv:1"), dest); err != nil {
		t.Fatalf("with credentials from the KBS: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dest, "p")); string(b) != "private" {
		t.Fatalf("rootfs p = %q", b)
	}
	for _, secret := range []string{pass, auth} {
		if strings.Contains(logs.String(), secret) {
			t.Fatalf("log contains a credential:\n%s", logs)
		}
	}
}

func TestConfigChecks(t *testing.T) {
	for _, bad := range []Config{
		{PolicyURI: "kbs:///default/../x"},
		{PolicyURI: "kbs:///only-two/parts"},
		{AuthURI: "relative/path"},
		{AuthURI: "https://example.invalid/creds"},
		{InsecureRegistries: []string{"host/path"}},
		{InsecureRegistries: []string{""}},
	} {
		bad.WorkDir = t.TempDir()
		if _, err := New(bad); err == nil {
			t.Errorf("New(%+v) accepted", bad)
		}
	}
	c, err := FromCDHConfig(`
[kbc]
name = "cc_kbc"
url = "http://10.0.2.100:8080"

[image]
image_security_policy_uri = "kbs:///default/security-policy/test"
authenticated_registry_credentials_uri = "kbs:///default/credential/test"
`)
	if err != nil {
		t.Fatal(err)
	}
	if c.ImageSecurityPolicyURI != "kbs:///default/security-policy/test" || c.AuthenticatedRegistryCredentialsURI != "kbs:///default/credential/test" {
		t.Fatalf("parsed %+v", c)
	}
	if _, err := FromCDHConfig("[image]\nimage_security_policy_uri = \"kbs:///a/../b\"\n"); err == nil {
		t.Fatal("bad URI in cdh.toml accepted")
	}
	if c, err := FromCDHConfig("socket = 'unix:///run/cdh.sock'\n"); err != nil || c != (ImageConfig{}) {
		t.Fatalf("cdh.toml without [image]: %+v, %v", c, err)
	}
}

type countingKBS struct {
	r Resources
	n int
}

func (c *countingKBS) GetResource(ctx context.Context, path string) ([]byte, error) {
	c.n++
	return c.r.GetResource(ctx, path)
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestEncryptedWithoutKBS: an encrypted layer in a guest that cannot
// attest is refused before anything is unpacked, saying where keys come
// from.
func TestEncryptedWithoutKBS(t *testing.T) {
	reg := imagetest.NewRegistry(t)
	l := imagetest.Layer(t, imagetest.Entry{Name: "a", Body: "secret app"})
	img, err := mutate.Append(empty.Image, mutate.Addendum{Layer: l, MediaType: "application/vnd.oci.image.layer.v1.tar+gzip+encrypted"})
	if err != nil {
		t.Fatal(err)
	}
	imagetest.Push(t, reg.Ref("enc:1"), img)
	s, _ := newService(t, Config{})
	dest := filepath.Join(t.TempDir(), "r")
	err = s.PullImage(context.Background(), reg.Ref("enc:1"), dest)
	if !errors.Is(err, pull.ErrEncryptedLayer) || !strings.Contains(err.Error(), "come from the KBS after attestation") {
		t.Fatalf("encrypted image without a KBS: %v", err)
	}
	if _, err := os.Stat(dest); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("left %s", dest)
	}
}

// TestDialAddrs: a registry named by one address is reached at another
// (the guest's forwarded service address), while the image keeps its name.
func TestDialAddrs(t *testing.T) {
	reg := imagetest.NewRegistry(t)
	imagetest.Push(t, reg.Ref("app:1"), imagetest.Image(t, imagetest.Layer(t, imagetest.Entry{Name: "a", Body: "via the forward"})))
	// The name the image uses: a loopback address where nothing listens.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	name := l.Addr().String()
	l.Close()
	plain, _ := newService(t, Config{})
	if err := plain.PullImage(context.Background(), name+"/app:1", filepath.Join(t.TempDir(), "r")); err == nil {
		t.Fatal("pulled from an address where no registry listens")
	}
	s, _ := newService(t, Config{DialAddrs: map[string]string{name: reg.Host}})
	dest := filepath.Join(t.TempDir(), "r")
	if err := s.PullImage(context.Background(), name+"/app:1", dest); err != nil {
		t.Fatalf("through the dial address: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dest, "a")); string(b) != "via the forward" {
		t.Fatalf("content %q", b)
	}
}
