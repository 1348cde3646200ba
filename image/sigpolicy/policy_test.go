package sigpolicy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/cocoon-containers/cocoon/image/imagetest"
	"github.com/cocoon-containers/cocoon/image/pull"
	"github.com/cocoon-containers/cocoon/image/unpack"
)

func newKey(t *testing.T) (*ecdsa.PrivateKey, string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return k, string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

func pullWith(t *testing.T, p *Policy, ref string) (string, error) {
	t.Helper()
	rootfs := filepath.Join(t.TempDir(), "rootfs")
	_, err := pull.Pull(context.Background(), ref, rootfs, pull.Options{
		AllowPlainHTTPLoopback: true, Verifier: p, Unpack: unpack.Options{NoChown: os.Getuid() != 0},
	})
	return rootfs, err
}

func TestSigstoreSigned(t *testing.T) {
	reg := imagetest.NewRegistry(t)
	key, pub := newKey(t)
	other, _ := newKey(t)
	repo := reg.Host + "/app"
	img := imagetest.Image(t, imagetest.Layer(t, imagetest.Entry{Name: "hello", Body: "signed"}))
	d := imagetest.Push(t, repo+":signed", img)
	imagetest.Sign(t, repo, d, imagetest.SimpleSigningPayload(repo, d), key)

	unsigned := imagetest.Image(t, imagetest.Layer(t, imagetest.Entry{Name: "hello", Body: "unsigned"}))
	imagetest.Push(t, repo+":unsigned", unsigned)

	badKey := imagetest.Image(t, imagetest.Layer(t, imagetest.Entry{Name: "hello", Body: "other key"}))
	bd := imagetest.Push(t, repo+":otherkey", badKey)
	imagetest.Sign(t, repo, bd, imagetest.SimpleSigningPayload(repo, bd), other)

	// Signed by the right key, but the payload names another image's digest.
	swapped := imagetest.Image(t, imagetest.Layer(t, imagetest.Entry{Name: "hello", Body: "swapped"}))
	sd := imagetest.Push(t, repo+":swapped", swapped)
	imagetest.Sign(t, repo, sd, imagetest.SimpleSigningPayload(repo, d), key)

	// Signed by the right key for another repository's identity.
	elsewhere := imagetest.Image(t, imagetest.Layer(t, imagetest.Entry{Name: "hello", Body: "elsewhere"}))
	ed := imagetest.Push(t, repo+":elsewhere", elsewhere)
	imagetest.Sign(t, repo, ed, imagetest.SimpleSigningPayload(reg.Host+"/other", ed), key)

	policy := `{"default":[{"type":"reject"}],"transports":{"docker":{"` + repo + `":[{"type":"sigstoreSigned","keyData":"` +
		base64.StdEncoding.EncodeToString([]byte(pub)) + `","signedIdentity":{"type":"matchRepository"}}]}}}`
	p, err := Parse([]byte(policy))
	if err != nil {
		t.Fatal(err)
	}
	rootfs, err := pullWith(t, p, repo+":signed")
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(rootfs, "hello")); string(b) != "signed" {
		t.Fatalf("content %q", b)
	}
	for tag, want := range map[string]string{
		"unsigned":  "no signatures",
		"otherkey":  "not signed by a trusted key",
		"swapped":   "is not the pulled",
		"elsewhere": "does not satisfy matchRepository",
	} {
		rootfs, err := pullWith(t, p, repo+":"+tag)
		if !errors.Is(err, ErrDenied) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want denial with %q", tag, err, want)
		}
		if _, serr := os.Stat(rootfs); serr == nil {
			t.Errorf("%s: rootfs created for a denied image", tag)
		}
	}
	// Anything outside the scope falls to the default, which rejects.
	imagetest.Push(t, reg.Host+"/else:1", img)
	if _, err := pullWith(t, p, reg.Host+"/else:1"); !errors.Is(err, ErrDenied) || !strings.Contains(err.Error(), `scope "default" rejects`) {
		t.Errorf("default: %v", err)
	}
}

func TestExactRepositoryAndKeyPath(t *testing.T) {
	reg := imagetest.NewRegistry(t)
	key, pub := newKey(t)
	keyFile := filepath.Join(t.TempDir(), "cosign.pub")
	if err := os.WriteFile(keyFile, []byte(pub), 0o644); err != nil {
		t.Fatal(err)
	}
	// The image is mirrored: signed as upstream/app, pulled from mirror/app.
	img := imagetest.Image(t, imagetest.Layer(t, imagetest.Entry{Name: "x", Body: "x"}))
	d := imagetest.Push(t, reg.Host+"/mirror/app:1", img)
	imagetest.Sign(t, reg.Host+"/mirror/app", d, imagetest.SimpleSigningPayload("example.com/upstream/app", d), key)
	mk := func(repo string) *Policy {
		p, err := Parse([]byte(`{"default":[{"type":"insecureAcceptAnything"}],"transports":{"docker":{"` + reg.Host + `/mirror":[
			{"type":"sigstoreSigned","keyPath":"` + keyFile + `","signedIdentity":{"type":"exactRepository","dockerRepository":"` + repo + `"}}]}}}`))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	if _, err := pullWith(t, mk("example.com/upstream/app"), reg.Host+"/mirror/app:1"); err != nil {
		t.Fatal(err)
	}
	if _, err := pullWith(t, mk("example.com/upstream/other"), reg.Host+"/mirror/app:1"); !errors.Is(err, ErrDenied) {
		t.Fatalf("wrong repository accepted: %v", err)
	}
}

func TestScopes(t *testing.T) {
	p, err := Parse([]byte(`{
	  "default": [{"type": "reject"}],
	  "transports": {"docker": {
	    "": [{"type": "insecureAcceptAnything"}],
	    "reg.example.com": [{"type": "reject"}],
	    "reg.example.com/team": [{"type": "insecureAcceptAnything"}],
	    "reg.example.com/team/app:pinned": [{"type": "reject"}],
	    "*.corp.example": [{"type": "reject"}],
	    "docker.io/library": [{"type": "reject"}]
	  }}}`))
	if err != nil {
		t.Fatal(err)
	}
	for ref, scope := range map[string]string{
		"reg.example.com/team/app:pinned": "reg.example.com/team/app:pinned",
		"reg.example.com/team/app:other":  "reg.example.com/team",
		"reg.example.com/teamx/app:1":     "reg.example.com",
		"a.b.corp.example/x:1":            "*.corp.example",
		"busybox":                         "docker.io/library",
		"quay.example/x:1":                "",
	} {
		r, err := name.ParseReference(ref)
		if err != nil {
			t.Fatal(err)
		}
		if _, got := p.Requirements(r); got != scope {
			t.Errorf("%s: scope %q, want %q", ref, got, scope)
		}
	}
	for _, bad := range []string{
		`{}`,
		`{"default":[{"type":"signedBy"}]}`,
		`{"default":[{"type":"sigstoreSigned"}]}`,
		`{"default":[{"type":"sigstoreSigned","keyData":"bm90IGEga2V5"}]}`,
		`{"default":[]}`,
	} {
		if _, err := Parse([]byte(bad)); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
}
