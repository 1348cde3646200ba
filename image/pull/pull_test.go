package pull

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/cocoon-containers/cocoon/image/imagetest"
	"github.com/cocoon-containers/cocoon/image/unpack"
)

func opts() Options {
	return Options{AllowPlainHTTPLoopback: true, Unpack: unpack.Options{NoChown: os.Getuid() != 0}}
}

func TestPullBusyboxAndRun(t *testing.T) {
	reg := imagetest.NewRegistry(t)
	img := imagetest.Image(t, imagetest.BusyboxLayer(t), imagetest.Layer(t,
		imagetest.Entry{Name: "etc/", Type: tar.TypeDir},
		imagetest.Entry{Name: "etc/motd", Body: "hello from the guest\n"},
	))
	want := imagetest.Push(t, reg.Ref("bb:1"), img)
	rootfs := filepath.Join(t.TempDir(), "rootfs")
	res, err := Pull(context.Background(), reg.Ref("bb:1"), rootfs, opts())
	if err != nil {
		t.Fatal(err)
	}
	if res.Digest != want || res.ImageDigest != want || len(res.Layers) != 2 {
		t.Fatalf("result %+v, want digest %s", res, want)
	}
	out, err := exec.Command(filepath.Join(rootfs, "bin/busybox"), "cat", filepath.Join(rootfs, "etc/motd")).CombinedOutput()
	if err != nil || string(out) != "hello from the guest\n" {
		t.Fatalf("busybox from the rootfs: %q %v", out, err)
	}
	if l, _ := os.Readlink(filepath.Join(rootfs, "bin/sh")); l != "busybox" {
		t.Errorf("bin/sh -> %q", l)
	}
}

func TestPlainHTTPNeedsOptIn(t *testing.T) {
	reg := imagetest.NewRegistry(t)
	imagetest.Push(t, reg.Ref("x:1"), imagetest.Image(t, imagetest.Layer(t, imagetest.Entry{Name: "a", Body: "a"})))
	o := opts()
	o.AllowPlainHTTPLoopback = false
	_, err := Pull(context.Background(), reg.Ref("x:1"), filepath.Join(t.TempDir(), "r"), o)
	if err == nil || !strings.Contains(err.Error(), "plain-HTTP") {
		t.Fatalf("got %v", err)
	}
}

// TestInsecureRegistryList: a registry that is not on loopback (here a
// name the test's dialer sends to the loopback registry, as the guest's
// service address is in a VM) is reached over plain HTTP only when listed.
func TestInsecureRegistryList(t *testing.T) {
	reg := imagetest.NewRegistry(t)
	imagetest.Push(t, reg.Ref("x:1"), imagetest.Image(t, imagetest.Layer(t, imagetest.Entry{Name: "a", Body: "listed"})))
	_, port, _ := net.SplitHostPort(reg.Host)
	remoteHost := "registry.test:" + port
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, reg.Host)
	}
	o := opts()
	o.AllowPlainHTTPLoopback = false
	o.Transport = tr
	_, err := Pull(context.Background(), remoteHost+"/x:1", filepath.Join(t.TempDir(), "r"), o)
	if err == nil {
		t.Fatal("plain HTTP to an unlisted registry: pulled")
	}
	o.InsecureRegistries = []string{"other.test:" + port}
	if _, err := Pull(context.Background(), remoteHost+"/x:1", filepath.Join(t.TempDir(), "r"), o); err == nil {
		t.Fatal("plain HTTP to a registry not in the list: pulled")
	}
	o.InsecureRegistries = []string{remoteHost}
	root := filepath.Join(t.TempDir(), "r")
	if _, err := Pull(context.Background(), remoteHost+"/x:1", root, o); err != nil {
		t.Fatalf("listed insecure registry: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(root, "a")); err != nil || string(b) != "listed" {
		t.Fatalf("rootfs content %q, %v", b, err)
	}
}

func TestTamperedBlobRefused(t *testing.T) {
	reg := imagetest.NewRegistry(t)
	good := imagetest.Layer(t, imagetest.Entry{Name: "a", Body: "first"})
	l := imagetest.Layer(t, imagetest.Entry{Name: "bin/evil", Body: "original"})
	imagetest.Push(t, reg.Ref("t:1"), imagetest.Image(t, good, l))
	d, _ := l.Digest()
	bad := imagetest.Layer(t, imagetest.Entry{Name: "bin/evil", Body: "swapped!"})
	rc, _ := bad.Compressed()
	var buf bytes.Buffer
	buf.ReadFrom(rc)
	reg.Tamper(d.String(), buf.Bytes())

	parent := t.TempDir()
	rootfs := filepath.Join(parent, "rootfs")
	cache, err := NewCache(filepath.Join(t.TempDir(), "cache"))
	if err != nil {
		t.Fatal(err)
	}
	o := opts()
	o.Cache = cache
	_, err = Pull(context.Background(), reg.Ref("t:1"), rootfs, o)
	var dm *DigestMismatchError
	if !errors.As(err, &dm) {
		t.Fatalf("want a digest mismatch, got %v", err)
	}
	if !strings.Contains(err.Error(), d.String()) {
		t.Errorf("error does not name the layer: %v", err)
	}
	ents, _ := os.ReadDir(parent)
	if len(ents) != 0 {
		t.Fatalf("left behind in the target's directory: %v", ents)
	}
	if _, err := cache.Open(d); err == nil {
		t.Fatal("tampered blob entered the cache")
	}
}

func TestSharedLayersPulledOnce(t *testing.T) {
	reg := imagetest.NewRegistry(t)
	base := imagetest.Layer(t, imagetest.Entry{Name: "base", Body: strings.Repeat("b", 4096)})
	a := imagetest.Image(t, base, imagetest.Layer(t, imagetest.Entry{Name: "a", Body: "a"}))
	b := imagetest.Image(t, base, imagetest.Layer(t, imagetest.Entry{Name: "b", Body: "b"}))
	imagetest.Push(t, reg.Ref("app/a:1"), a)
	imagetest.Push(t, reg.Ref("app/b:1"), b)
	cache, err := NewCache(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	o := opts()
	o.Cache = cache
	dir := t.TempDir()
	var wg sync.WaitGroup
	errs := make([]error, 6)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ref := []string{"app/a:1", "app/b:1"}[i%2]
			_, errs[i] = Pull(context.Background(), reg.Ref(ref), filepath.Join(dir, "c", string(rune('0'+i))), o)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	// base + a's top + b's top: three distinct layers, each downloaded once.
	if got := cache.Fetches(); got != 3 {
		t.Fatalf("%d layer downloads for 3 distinct layers", got)
	}
	for i := range errs {
		if b, err := os.ReadFile(filepath.Join(dir, "c", string(rune('0'+i)), "base")); err != nil || len(b) != 4096 {
			t.Fatalf("container %d: base %d %v", i, len(b), err)
		}
	}
}

func TestIndexPlatformSelection(t *testing.T) {
	reg := imagetest.NewRegistry(t)
	imgs := map[string]v1.Image{}
	for _, arch := range []string{"amd64", "arm64", "s390x"} {
		imgs[arch] = imagetest.ImageFor(t, arch, imagetest.Layer(t, imagetest.Entry{Name: "arch", Body: arch}))
	}
	idx := imagetest.PushIndex(t, reg.Ref("multi:1"), imgs)
	for _, arch := range []string{"", "arm64", "s390x"} {
		o := opts()
		want := "amd64"
		if arch != "" {
			o.Platform = &v1.Platform{OS: "linux", Architecture: arch}
			want = arch
		}
		rootfs := filepath.Join(t.TempDir(), "r")
		res, err := Pull(context.Background(), reg.Ref("multi:1"), rootfs, o)
		if err != nil {
			t.Fatal(err)
		}
		wantDigest, _ := imgs[want].Digest()
		if res.Digest != idx || res.ImageDigest != wantDigest {
			t.Errorf("%s: digests %s %s", want, res.Digest, res.ImageDigest)
		}
		if b, _ := os.ReadFile(filepath.Join(rootfs, "arch")); string(b) != want {
			t.Errorf("platform %q got content %q", want, b)
		}
	}
	o := opts()
	o.Platform = &v1.Platform{OS: "linux", Architecture: "riscv64"}
	if _, err := Pull(context.Background(), reg.Ref("multi:1"), filepath.Join(t.TempDir(), "r"), o); err == nil {
		t.Fatal("missing platform accepted")
	}
}

func TestTraversalLayerLeavesNothing(t *testing.T) {
	reg := imagetest.NewRegistry(t)
	outside := t.TempDir()
	imagetest.Push(t, reg.Ref("evil:1"), imagetest.Image(t,
		imagetest.Layer(t, imagetest.Entry{Name: "ok", Body: "fine"}),
		imagetest.Layer(t,
			imagetest.Entry{Name: "link", Type: tar.TypeSymlink, Link: outside},
			imagetest.Entry{Name: "link/pwned", Body: "x"}),
	))
	parent := t.TempDir()
	_, err := Pull(context.Background(), reg.Ref("evil:1"), filepath.Join(parent, "rootfs"), opts())
	if !errors.Is(err, unpack.ErrUnsafePath) {
		t.Fatalf("got %v", err)
	}
	if ents, _ := os.ReadDir(parent); len(ents) != 0 {
		t.Fatalf("left behind: %v", ents)
	}
	if _, err := os.Stat(filepath.Join(outside, "pwned")); err == nil {
		t.Fatal("wrote outside the rootfs")
	}
}

type denyAll struct{ called bool }

func (d *denyAll) Verify(context.Context, name.Reference, v1.Hash, ...remote.Option) error {
	d.called = true
	return errors.New("policy says no")
}

func TestVerifierRunsBeforeLayers(t *testing.T) {
	reg := imagetest.NewRegistry(t)
	imagetest.Push(t, reg.Ref("x:1"), imagetest.Image(t, imagetest.Layer(t, imagetest.Entry{Name: "a", Body: "a"})))
	before := reg.BlobGets.Load()
	o := opts()
	v := &denyAll{}
	o.Verifier = v
	_, err := Pull(context.Background(), reg.Ref("x:1"), filepath.Join(t.TempDir(), "r"), o)
	if err == nil || !v.called || !strings.Contains(err.Error(), "denied: policy says no") {
		t.Fatalf("got %v", err)
	}
	// Only the config may have been read (remote.Get reads none): no layer.
	if n := reg.BlobGets.Load() - before; n != 0 {
		t.Fatalf("%d blob requests before the verifier denied", n)
	}
}

func TestAuthFromConfig(t *testing.T) {
	reg := imagetest.NewRegistry(t)
	imagetest.Push(t, reg.Ref("priv:1"), imagetest.Image(t, imagetest.Layer(t, imagetest.Entry{Name: "a", Body: "a"})))
	// A front that demands basic auth, forwarding to the registry.
	front := &http.Transport{}
	var sawAuth bool
	o := opts()
	o.Transport = roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if r.URL.Scheme == "https" { // the registry speaks plain HTTP only
			return front.RoundTrip(r)
		}
		if u, p, ok := r.BasicAuth(); ok && u == "alice" && p == "s3cret" {
			sawAuth = true
			return front.RoundTrip(r)
		}
		return &http.Response{StatusCode: 401, Header: http.Header{"Www-Authenticate": {`Basic realm="test"`}},
			Body: http.NoBody, Request: r}, nil
	})
	if _, err := Pull(context.Background(), reg.Ref("priv:1"), filepath.Join(t.TempDir(), "r"), o); err == nil {
		t.Fatal("pull without credentials succeeded")
	}
	cfg, err := ParseAuthConfig([]byte(`{"auths":{"` + reg.Host + `":{"auth":"` +
		base64.StdEncoding.EncodeToString([]byte("alice:s3cret")) + `"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	o.Auth = cfg
	if _, err := Pull(context.Background(), reg.Ref("priv:1"), filepath.Join(t.TempDir(), "r"), o); err != nil || !sawAuth {
		t.Fatalf("pull with credentials: %v (auth seen %v)", err, sawAuth)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// xorDecrypter stands in for an ocicrypt + KBS key getter: the "encrypted"
// blob is the gzip layer XORed with a one-byte key.
type xorDecrypter struct {
	seen     []string
	closeErr error // what Close reports: a late authentication failure
}

type closeErrReader struct {
	io.Reader
	err error
}

func (c closeErrReader) Close() error { return c.err }

func (x *xorDecrypter) Decrypt(_ context.Context, l v1.Descriptor, r io.Reader) (io.ReadCloser, error) {
	x.seen = append(x.seen, l.Annotations["org.opencontainers.image.enc.keys.provider.attestation-agent"])
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	for i := range b {
		b[i] ^= 0x5a
	}
	return closeErrReader{bytes.NewReader(b), x.closeErr}, nil
}

func TestEncryptedLayerDecrypterHook(t *testing.T) {
	reg := imagetest.NewRegistry(t)
	plain := imagetest.Layer(t, imagetest.Entry{Name: "secret", Body: "decrypted content"})
	rc, _ := plain.Compressed()
	gz, _ := io.ReadAll(rc)
	for i := range gz {
		gz[i] ^= 0x5a
	}
	diffID, _ := plain.DiffID()
	enc := static.NewLayer(gz, types.MediaType("application/vnd.oci.image.layer.v1.tar+gzip+encrypted"))
	img, err := mutate.Append(empty.Image, mutate.Addendum{Layer: enc, Annotations: map[string]string{
		"org.opencontainers.image.enc.keys.provider.attestation-agent": "e30=",
	}})
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.RootFS.DiffIDs = []v1.Hash{diffID}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	imagetest.Push(t, reg.Ref("enc:1"), img)

	_, err = Pull(context.Background(), reg.Ref("enc:1"), filepath.Join(t.TempDir(), "r"), opts())
	if !errors.Is(err, ErrEncryptedLayer) {
		t.Fatalf("without a decrypter: %v", err)
	}
	o := opts()
	dec := &xorDecrypter{}
	o.Decrypter = dec
	rootfs := filepath.Join(t.TempDir(), "r")
	if _, err := Pull(context.Background(), reg.Ref("enc:1"), rootfs, o); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(rootfs, "secret")); string(b) != "decrypted content" {
		t.Fatalf("content %q", b)
	}
	if len(dec.seen) != 1 || dec.seen[0] != "e30=" {
		t.Fatalf("decrypter saw annotations %q", dec.seen)
	}
	// A failure the decrypter reports only at Close (what it checks after
	// the decompressor stopped reading) fails the pull.
	o.Decrypter = &xorDecrypter{closeErr: errors.New("authentication failed")}
	late := filepath.Join(t.TempDir(), "r")
	if _, err := Pull(context.Background(), reg.Ref("enc:1"), late, o); err == nil || !strings.Contains(err.Error(), "decrypt: authentication failed") {
		t.Fatalf("error at Close: %v", err)
	}
	if _, err := os.Stat(late); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("left %s", late)
	}
}
