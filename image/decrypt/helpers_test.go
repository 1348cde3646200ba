package decrypt_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"

	"github.com/cocoon-containers/cocoon/image/imagetest"
	"github.com/cocoon-containers/cocoon/image/pull"
	"github.com/cocoon-containers/cocoon/image/unpack"
)

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

// keyProvider is the test key provider binary.
func keyProvider(t *testing.T) string { return imagetest.KeyProvider(t) }

func TestMain(m *testing.M) {
	code := m.Run()
	imagetest.RemoveBuilt()
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

// encryptWithSkopeo pushes plainImage, then has skopeo encrypt every layer
// of it into enc:v1 with attestation-agent packets for kid wrapped under
// key (see imagetest.EncryptForKBS).
func encryptWithSkopeo(t *testing.T, kid string, key []byte) *encrypted {
	t.Helper()
	reg := imagetest.NewRegistry(t)
	img := plainImage(t)
	imagetest.Push(t, reg.Ref("plain:v1"), img)
	mf := imagetest.EncryptForKBS(t, reg, reg.Ref("plain:v1"), reg.Ref("enc:v1"), kid, key)
	return &encrypted{Reg: reg, Ref: reg.Ref("enc:v1"), Kid: kid, Key: key, Plain: img, Manifest: mf}
}

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
	return compressed(t, l)
}

// compressed reads a layer's compressed bytes.
func compressed(t *testing.T, l v1.Layer) []byte {
	t.Helper()
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
	return compressed(t, ls[i])
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
	if err := remote.Put(ref, imagetest.RawManifest{B: raw, MT: desc.MediaType}); err != nil {
		t.Fatal(err)
	}
	if e.Manifest, err = v1.ParseManifest(bytes.NewReader(raw)); err != nil {
		t.Fatal(err)
	}
}
