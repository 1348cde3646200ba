// Package imagetest serves locally built images from an in-process registry
// on loopback and signs them the way cosign stores signatures, for the
// tests and benchmarks of image/.
package imagetest

import (
	"archive/tar"
	"bytes"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Registry is an in-process registry on 127.0.0.1.
type Registry struct {
	Host string // 127.0.0.1:port
	srv  *httptest.Server

	BlobGets atomic.Int64

	mu     sync.Mutex
	tamper map[string][]byte // blob digest -> bytes served instead
}

// NewRegistry starts a registry; it stops with the test.
func NewRegistry(tb testing.TB) *Registry {
	r := &Registry{tamper: map[string][]byte{}}
	inner := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/blobs/sha256:") {
			r.BlobGets.Add(1)
			d := req.URL.Path[strings.LastIndex(req.URL.Path, "/")+1:]
			r.mu.Lock()
			b, ok := r.tamper[d]
			r.mu.Unlock()
			if ok {
				w.Header().Set("Content-Length", fmt.Sprint(len(b)))
				w.Header().Set("Docker-Content-Digest", d)
				w.Write(b)
				return
			}
		}
		inner.ServeHTTP(w, req)
	}))
	tb.Cleanup(r.srv.Close)
	r.Host = strings.TrimPrefix(r.srv.URL, "http://")
	return r
}

// Tamper makes the registry serve body for the blob digest.
func (r *Registry) Tamper(digest string, body []byte) {
	r.mu.Lock()
	r.tamper[digest] = body
	r.mu.Unlock()
}

// Ref is host/repo:tag (or @digest) on this registry.
func (r *Registry) Ref(repoTag string) string { return r.Host + "/" + repoTag }

// Entry is one tar entry of a test layer.
type Entry struct {
	Name, Link, Body   string
	Type               byte
	Mode               int64
	Uid, Gid           int
	Devmajor, Devminor int64
	Xattrs             map[string]string
}

// TarBytes builds an uncompressed tar.
func TarBytes(tb testing.TB, es ...Entry) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range es {
		h := &tar.Header{Name: e.Name, Linkname: e.Link, Typeflag: e.Type, Mode: e.Mode, Uid: e.Uid, Gid: e.Gid,
			Devmajor: e.Devmajor, Devminor: e.Devminor}
		for k, v := range e.Xattrs {
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
			}
			h.PAXRecords["SCHILY.xattr."+k] = v
		}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.Body))
		}
		if h.Mode == 0 {
			h.Mode = 0o644
			if h.Typeflag == tar.TypeDir {
				h.Mode = 0o755
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			tb.Fatal(err)
		}
		if _, err := io.WriteString(tw, e.Body); err != nil {
			tb.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

// Layer is a gzip layer of the entries.
func Layer(tb testing.TB, es ...Entry) v1.Layer {
	b := TarBytes(tb, es...)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		tb.Fatal(err)
	}
	return l
}

// BusyboxLayer holds /bin/busybox and a sh symlink to it.
func BusyboxLayer(tb testing.TB) v1.Layer {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		tb.Skipf("no /bin/busybox: %v", err)
	}
	return Layer(tb,
		Entry{Name: "bin/", Type: tar.TypeDir},
		Entry{Name: "bin/busybox", Body: string(bb), Mode: 0o755},
		Entry{Name: "bin/sh", Type: tar.TypeSymlink, Link: "busybox"},
	)
}

// Image stacks layers on an empty linux/amd64 image.
func Image(tb testing.TB, layers ...v1.Layer) v1.Image {
	return ImageFor(tb, "amd64", layers...)
}

// ImageFor stacks layers on an empty linux/<arch> image.
func ImageFor(tb testing.TB, arch string, layers ...v1.Layer) v1.Image {
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		tb.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		tb.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		tb.Fatal(err)
	}
	return img
}

// Push writes img to ref and returns its manifest digest.
func Push(tb testing.TB, ref string, img v1.Image) v1.Hash {
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		tb.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		tb.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		tb.Fatal(err)
	}
	return d
}

// PushIndex writes an index of the images (with their platforms) to ref.
func PushIndex(tb testing.TB, ref string, imgs map[string]v1.Image) v1.Hash {
	var idx v1.ImageIndex = empty.Index
	idx = mutate.IndexMediaType(idx, types.OCIImageIndex)
	for arch, img := range imgs {
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{
			Platform: &v1.Platform{OS: "linux", Architecture: arch},
		}})
	}
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		tb.Fatal(err)
	}
	if err := remote.WriteIndex(r, idx); err != nil {
		tb.Fatal(err)
	}
	d, err := idx.Digest()
	if err != nil {
		tb.Fatal(err)
	}
	return d
}

// SimpleSigningPayload is the JSON cosign signs.
func SimpleSigningPayload(dockerRef string, digest v1.Hash) []byte {
	p := map[string]any{
		"critical": map[string]any{
			"identity": map[string]string{"docker-reference": dockerRef},
			"image":    map[string]string{"docker-manifest-digest": digest.String()},
			"type":     "cosign container image signature",
		},
		"optional": nil,
	}
	b, err := json.Marshal(p)
	if err != nil {
		panic(err)
	}
	return b
}

// Sign stores a signature of the manifest digest under the cosign tag
// sha256-<hex>.sig in repo (host/path), signing payload with key.
func Sign(tb testing.TB, repo string, digest v1.Hash, payload []byte, key *ecdsa.PrivateKey) {
	sum := sha256.Sum256(payload)
	sig, err := ecdsa.SignASN1(rand.Reader, key, sum[:])
	if err != nil {
		tb.Fatal(err)
	}
	l := static.NewLayer(payload, "application/vnd.dev.cosign.simplesigning.v1+json")
	img, err := mutate.Append(mutate.MediaType(mutate.ConfigMediaType(empty.Image, types.OCIConfigJSON), types.OCIManifestSchema1),
		mutate.Addendum{Layer: l, Annotations: map[string]string{
			"dev.cosignproject.cosign/signature": base64.StdEncoding.EncodeToString(sig),
		}})
	if err != nil {
		tb.Fatal(err)
	}
	Push(tb, fmt.Sprintf("%s:%s-%s.sig", repo, digest.Algorithm, digest.Hex), img)
}

// AppImage is busybox plus two layers that exercise unpacking: the second
// adds files and a hard link, the third deletes one file with a whiteout
// and empties a directory with an opaque whiteout. AppScript, run with sh
// in a container of it, prints AppOutput when all of that came out right.
func AppImage(tb testing.TB) v1.Image {
	return Image(tb, BusyboxLayer(tb),
		Layer(tb,
			Entry{Name: "etc/", Type: tar.TypeDir},
			Entry{Name: "etc/app/", Type: tar.TypeDir},
			Entry{Name: "etc/app/keep", Body: "kept\n"},
			Entry{Name: "etc/app/link", Type: tar.TypeLink, Link: "etc/app/keep"},
			Entry{Name: "etc/app/gone", Body: "deleted later\n"},
			Entry{Name: "etc/app/cache/", Type: tar.TypeDir},
			Entry{Name: "etc/app/cache/old", Body: "stale\n"},
		),
		Layer(tb,
			Entry{Name: "etc/app/.wh.gone", Body: ""},
			Entry{Name: "etc/app/cache/.wh..wh..opq", Body: ""},
			Entry{Name: "etc/app/cache/new", Body: "fresh\n"},
		),
	)
}

// AppScript checks AppImage's rootfs from inside a container.
const AppScript = `cat /etc/app/keep; ` +
	`[ -e /etc/app/gone ] || echo whiteout-ok; ` +
	`ls /etc/app/cache; ` +
	`[ "$(stat -c %i /etc/app/keep)" = "$(stat -c %i /etc/app/link)" ] && echo hardlink-ok`

// AppOutput is what AppScript prints.
const AppOutput = "kept\nwhiteout-ok\nnew\nhardlink-ok\n"

// PushTampered pushes busybox plus one small layer to ref on reg, then has
// reg serve other bytes for that layer: a pull must refuse it by digest.
func PushTampered(tb testing.TB, reg *Registry, ref string) {
	tb.Helper()
	img := Image(tb, BusyboxLayer(tb), Layer(tb, Entry{Name: "x", Body: "original"}))
	Push(tb, ref, img)
	ls, err := img.Layers()
	if err != nil {
		tb.Fatal(err)
	}
	d, err := ls[1].Digest()
	if err != nil {
		tb.Fatal(err)
	}
	reg.Tamper(d.String(), []byte("not the layer the manifest names"))
}
