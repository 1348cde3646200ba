package decrypt_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/containers/ocicrypt/config"
	"github.com/containers/ocicrypt/keywrap/jwe"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/cocoon-containers/cocoon/image/decrypt"
	"github.com/cocoon-containers/cocoon/image/imagetest"
	"github.com/cocoon-containers/cocoon/image/pull"
	"github.com/cocoon-containers/cocoon/image/unpack"
)

const skopeo = "/usr/bin/skopeo"

// files are what the test image's two layers leave in the rootfs.
var files = map[string]string{
	"etc/app.conf":       "mode = confidential\n",
	"srv/data/hello.txt": "hello from an encrypted layer\n",
	"srv/data/second":    strings.Repeat("0123456789abcdef", 4096),
	// Incompressible, so that the encrypted layer is larger than the
	// block cipher's 10 KiB read-ahead.
	"srv/data/noise": noise(200 << 10),
}

// noise is n fixed bytes that gzip cannot shrink.
func noise(n int) string {
	var b []byte
	sum := sha256.Sum256([]byte("noise"))
	for len(b) < n {
		b = append(b, sum[:]...)
		sum = sha256.Sum256(sum[:])
	}
	return string(b[:n])
}

// plainImage is two gzip layers holding files.
func plainImage(t *testing.T) v1.Image {
	return imagetest.Image(t,
		imagetest.Layer(t,
			imagetest.Entry{Name: "etc/", Type: tar.TypeDir},
			imagetest.Entry{Name: "etc/app.conf", Body: files["etc/app.conf"]},
		),
		imagetest.Layer(t,
			imagetest.Entry{Name: "srv/", Type: tar.TypeDir},
			imagetest.Entry{Name: "srv/data/", Type: tar.TypeDir},
			imagetest.Entry{Name: "srv/data/hello.txt", Body: files["srv/data/hello.txt"]},
			imagetest.Entry{Name: "srv/data/second", Body: files["srv/data/second"]},
			imagetest.Entry{Name: "srv/data/noise", Body: files["srv/data/noise"]},
		),
	)
}

var (
	providerOnce sync.Once
	providerPath string
	providerErr  error
)

// keyProvider builds internal/testkeyprovider once per test binary.
func keyProvider(t *testing.T) string {
	t.Helper()
	providerOnce.Do(func() {
		dir, err := os.MkdirTemp("", "decrypt-test-keyprovider-")
		if err != nil {
			providerErr = err
			return
		}
		providerPath = filepath.Join(dir, "testkeyprovider")
		out, err := exec.Command("go", "build", "-o", providerPath, "./internal/testkeyprovider").CombinedOutput()
		if err != nil {
			providerErr = fmt.Errorf("go build testkeyprovider: %v\n%s", err, out)
		}
	})
	if providerErr != nil {
		t.Fatal(providerErr)
	}
	return providerPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if providerPath != "" {
		os.RemoveAll(filepath.Dir(providerPath))
	}
	os.Exit(code)
}

// newKey returns a random 32-byte key.
func newKey(t *testing.T) []byte {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

// encrypted is an image that skopeo encrypted on a loopback registry.
type encrypted struct {
	Reg      *imagetest.Registry
	Ref      string
	Kid      string
	Key      []byte
	Plain    v1.Image
	Manifest *v1.Manifest
}

// The key provider annotation skopeo leaves for a jwe: recipient.
const annotationJWE = "org.opencontainers.image.enc.keys.jwe"

// encryptWithSkopeo pushes plainImage, then has skopeo encrypt every layer
// of it into enc:v1, and gives the layers attestation-agent packets for
// kid wrapped under key.
//
// Debian's skopeo 1.9.3 is built with ocicrypt 1.0.3, which predates key
// providers ("provider:..." is refused as an unknown protocol). So skopeo
// encrypts for a JWE recipient whose private key the test holds; the test
// then does what coco-keyprovider does inside a newer skopeo: it hands the
// layer's private options (unwrapped from the JWE) to the key provider
// over ocicrypt's keywrap protocol and puts the packet it returns in the
// layer's attestation-agent annotation, in place of the JWE one. Layer
// blobs, media types and public options stay as skopeo wrote them.
func encryptWithSkopeo(t *testing.T, kid string, key []byte) *encrypted {
	t.Helper()
	if _, err := os.Stat(skopeo); err != nil {
		t.Fatalf("skopeo is needed (Debian package skopeo, make deps): %v", err)
	}
	reg := imagetest.NewRegistry(t)
	img := plainImage(t)
	imagetest.Push(t, reg.Ref("plain:v1"), img)

	dir := t.TempDir()
	keyFile := filepath.Join(dir, "kek")
	if err := os.WriteFile(keyFile, key, 0o600); err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pubFile := filepath.Join(dir, "recipient.pub.pem")
	if err := os.WriteFile(pubFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	privPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)})
	policy := filepath.Join(dir, "policy.json")
	if err := os.WriteFile(policy, []byte(`{"default":[{"type":"insecureAcceptAnything"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(skopeo, "--policy", policy, "copy",
		"--src-tls-verify=false", "--dest-tls-verify=false",
		"--format", "oci",
		"--encryption-key", "jwe:"+pubFile,
		"docker://"+reg.Ref("plain:v1"), "docker://"+reg.Ref("enc:v1"))
	cmd.Env = append(os.Environ(), "HOME="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("skopeo copy: %v\n%s", err, out)
	}

	ref, err := name.ParseReference(reg.Ref("enc:v1"), name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Get(ref)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(desc.Manifest, &m); err != nil {
		t.Fatal(err)
	}
	layers, _ := m["layers"].([]any)
	if len(layers) == 0 {
		t.Fatalf("skopeo wrote a manifest without layers: %s", desc.Manifest)
	}
	for i, l := range layers {
		lm := l.(map[string]any)
		anns, _ := lm["annotations"].(map[string]any)
		jweAnn, _ := anns[annotationJWE].(string)
		if jweAnn == "" {
			t.Fatalf("skopeo left layer %d without %s: %v", i, annotationJWE, anns)
		}
		jweBytes, err := base64.StdEncoding.DecodeString(jweAnn)
		if err != nil {
			t.Fatal(err)
		}
		optsData, err := jwe.NewKeyWrapper().UnwrapKey(&config.DecryptConfig{Parameters: map[string][][]byte{
			"privkeys": {privPEM}, "privkeys-passwords": {nil},
		}}, jweBytes)
		if err != nil {
			t.Fatalf("layer %d: opening skopeo's JWE: %v", i, err)
		}
		delete(anns, annotationJWE)
		anns[decrypt.AnnotationKeyProvider] = base64.StdEncoding.EncodeToString(providerWrap(t, kid, keyFile, optsData))
	}
	raw, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Put(ref, rawManifest{raw, types.MediaType(desc.MediaType)}); err != nil {
		t.Fatal(err)
	}
	mf, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	return &encrypted{Reg: reg, Ref: reg.Ref("enc:v1"), Kid: kid, Key: key, Plain: img, Manifest: mf}
}

// providerWrap runs the key provider as ocicrypt does for "keywrap" and
// returns its annotation (the JSON packet).
func providerWrap(t *testing.T, kid, keyFile string, optsData []byte) []byte {
	t.Helper()
	req, err := json.Marshal(map[string]any{
		"op": "keywrap",
		"keywrapparams": map[string]any{
			"ec":       config.EncryptConfig{Parameters: map[string][][]byte{"attestation-agent": {[]byte("keyid=" + kid + "::keypath=" + keyFile)}}},
			"optsdata": optsData,
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(keyProvider(t))
	cmd.Stdin = bytes.NewReader(req)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("key provider: %v: %s", err, stderr.String())
	}
	var resp struct {
		KeyWrapResults struct {
			Annotation []byte `json:"annotation"`
		} `json:"keywrapresults"`
	}
	if err := json.Unmarshal(out, &resp); err != nil {
		t.Fatal(err)
	}
	if len(resp.KeyWrapResults.Annotation) == 0 {
		t.Fatalf("key provider answered without an annotation: %s", out)
	}
	return resp.KeyWrapResults.Annotation
}

// rawManifest lets remote.Put write manifest bytes as they are.
type rawManifest struct {
	b  []byte
	mt types.MediaType
}

func (r rawManifest) RawManifest() ([]byte, error)        { return r.b, nil }
func (r rawManifest) MediaType() (types.MediaType, error) { return r.mt, nil }

// blob fetches a blob of the encrypted image from the registry.
func (e *encrypted) blob(t *testing.T, d v1.Hash) []byte {
	t.Helper()
	ref, err := name.ParseReference(e.Reg.Ref("enc@"+d.String()), name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	l, err := remote.Layer(ref.(name.Digest))
	if err != nil {
		t.Fatal(err)
	}
	rc, err := l.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// plainLayer is the compressed bytes of the plain image's layer i.
func (e *encrypted) plainLayer(t *testing.T, i int) []byte {
	t.Helper()
	ls, err := e.Plain.Layers()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := ls[i].Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// packet is the decoded key provider annotation of a layer.
type packet struct {
	Kid         string `json:"kid"`
	WrappedData string `json:"wrapped_data"`
	IV          string `json:"iv"`
	WrapType    string `json:"wrap_type"`
}

func decodePacket(t *testing.T, ann string) packet {
	t.Helper()
	raw, err := base64.StdEncoding.DecodeString(ann)
	if err != nil {
		t.Fatalf("annotation is not base64: %v", err)
	}
	var p packet
	if err := json.Unmarshal(raw, &p); err != nil {
		t.Fatalf("annotation is not a packet: %v", err)
	}
	return p
}

func encodePacket(t *testing.T, p any) string {
	t.Helper()
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b)
}

// gcm opens or seals like the key provider, under key.
func gcm(t *testing.T, key []byte) cipher.AEAD {
	t.Helper()
	b, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	a, err := cipher.NewGCM(b)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// fetcher is a KBS stand-in: a key per resource path, or an error.
type fetcher struct {
	mu     sync.Mutex
	keys   map[string][]byte
	err    error
	calls  atomic.Int32
	handed [][]byte // every slice returned, to check they get zeroed
}

func newFetcher(path string, key []byte) *fetcher {
	return &fetcher{keys: map[string][]byte{path: key}}
}

func (f *fetcher) GetResource(ctx context.Context, path string) ([]byte, error) {
	f.calls.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	k, ok := f.keys[path]
	if !ok {
		return nil, fmt.Errorf("kbs: 404 ResourceNotFound: %s", path)
	}
	c := bytes.Clone(k)
	f.handed = append(f.handed, c)
	return c, nil
}

// errKBS stands for a KBS that refused to release a key.
var errKBS = errors.New("kbs: 401 PolicyDeny: resource policy denied the request")

// pullOpts pulls over loopback HTTP with d.
func pullOpts(d pull.LayerDecrypter) pull.Options {
	return pull.Options{
		AllowPlainHTTPLoopback: true,
		Decrypter:              d,
		Unpack:                 unpack.Options{NoChown: os.Getuid() != 0},
	}
}

// checkFiles compares the rootfs with files.
func checkFiles(t *testing.T, rootfs string) {
	t.Helper()
	for p, want := range files {
		got, err := os.ReadFile(filepath.Join(rootfs, p))
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		if string(got) != want {
			t.Errorf("%s: %d bytes differ from the %d written", p, len(got), len(want))
		}
	}
}

// noRootfs asserts that a failed pull left no rootfs behind.
func noRootfs(t *testing.T, rootfs string) {
	t.Helper()
	if _, err := os.Stat(rootfs); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("rootfs %s exists after a failed pull (stat: %v)", rootfs, err)
	}
	ents, _ := os.ReadDir(filepath.Dir(rootfs))
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "."+filepath.Base(rootfs)) {
			t.Errorf("staging %s left behind", e.Name())
		}
	}
}

// noSecret asserts that none of the keys shows in s, in any of the usual
// encodings.
func noSecret(t *testing.T, s string, keys ...[]byte) {
	t.Helper()
	for _, k := range keys {
		for _, enc := range []string{
			string(k),
			hex.EncodeToString(k),
			base64.StdEncoding.EncodeToString(k),
			base64.RawURLEncoding.EncodeToString(k),
			fmt.Sprint(k),
			fmt.Sprintf("%x", k[:8]),
		} {
			if strings.Contains(s, enc) {
				t.Errorf("key material %q shows in %q", enc, s)
			}
		}
	}
}

func runtimeGosched() { runtime.Gosched() }

// replaceLayer uploads blob and points layer i of enc:v1's manifest at it,
// keeping its media type and annotations.
func (e *encrypted) replaceLayer(t *testing.T, i int, blob []byte) {
	t.Helper()
	ref, err := name.ParseReference(e.Ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	mt := e.Manifest.Layers[i].MediaType
	if err := remote.WriteLayer(ref.Context(), static.NewLayer(blob, mt)); err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Get(ref)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(desc.Manifest, &m); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(blob)
	lm := m["layers"].([]any)[i].(map[string]any)
	lm["digest"] = "sha256:" + hex.EncodeToString(sum[:])
	lm["size"] = len(blob)
	raw, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Put(ref, rawManifest{raw, desc.MediaType}); err != nil {
		t.Fatal(err)
	}
	if e.Manifest, err = v1.ParseManifest(bytes.NewReader(raw)); err != nil {
		t.Fatal(err)
	}
}
