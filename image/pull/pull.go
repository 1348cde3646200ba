// Package pull fetches a container image from a registry and unpacks it into
// a rootfs directory: manifest or index (platform selection), an optional
// signature check before any layer is touched, every blob verified against its
// digest while it streams into a content-addressed layer cache shared by all
// pulls, and each layer's uncompressed bytes verified against the config's
// diff_ids while being unpacked into a staging directory that only becomes
// the rootfs once every layer applied.
package pull

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sync/errgroup"

	"github.com/cocoon-containers/cocoon/image/unpack"
)

// Verifier decides whether an image may be used, given the reference the
// caller asked for and the digest of the manifest (or index) it resolved to.
// It runs before any layer is fetched. image/sigpolicy implements it.
type Verifier interface {
	Verify(ctx context.Context, ref name.Reference, manifestDigest v1.Hash, opts ...remote.Option) error
}

// LayerDecrypter turns an encrypted layer blob (ocicrypt media types) into
// its plain compressed form. A key provider such as the KBS client plugs in
// here; the key stays inside the implementation.
type LayerDecrypter interface {
	Decrypt(ctx context.Context, layer v1.Descriptor, blob io.Reader) (io.ReadCloser, error)
}

// Options configure a pull.
type Options struct {
	// Platform to select from an index; linux/amd64 when nil.
	Platform *v1.Platform
	// Auth holds registry credentials (docker config.json "auths").
	Auth *AuthConfig
	// AllowPlainHTTPLoopback permits http:// to localhost / loopback IPs.
	AllowPlainHTTPLoopback bool
	// InsecureRegistries lists registries (host or host:port, exactly as
	// in the image reference) that may be reached over plain HTTP, as
	// containerd's and CRI-O's "insecure registries". Digests still bind
	// every byte; what plain HTTP gives away is confidentiality of the
	// request and of unencrypted layers. Any other plain-HTTP request is
	// refused.
	InsecureRegistries []string
	// Verifier, when set, must accept the image before layers are fetched.
	Verifier Verifier
	// Decrypter handles encrypted layers; without it they are refused.
	Decrypter LayerDecrypter
	// Cache of verified layer blobs; a private temporary one when nil.
	Cache *Cache
	// Unpack bounds and shapes layer extraction.
	Unpack unpack.Options
	// Transport underlies the registry client (http.DefaultTransport if nil).
	Transport http.RoundTripper
	// Jobs is the number of concurrent layer downloads (default 4).
	Jobs int
}

// Result describes what was pulled.
type Result struct {
	// Digest of the manifest or index the reference resolved to.
	Digest v1.Hash
	// ImageDigest is the platform manifest's digest (equal to Digest when
	// the reference named a manifest).
	ImageDigest v1.Hash
	Config      *v1.ConfigFile
	Layers      []v1.Descriptor
}

// ErrEncryptedLayer is returned for encrypted layers without a Decrypter.
var ErrEncryptedLayer = errors.New("encrypted layer and no decrypter configured")

type guard struct {
	base     http.RoundTripper
	allow    bool
	insecure []string
}

func (g guard) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Scheme != "https" {
		ok := r.URL.Scheme == "http" && ((g.allow && isLoopback(r.URL.Hostname())) || slices.Contains(g.insecure, r.URL.Host))
		if !ok {
			return nil, fmt.Errorf("plain-HTTP registry access to %s refused (allowed only for loopback when enabled, or for a registry listed as insecure)", r.URL.Host)
		}
	}
	return g.base.RoundTrip(r)
}

// hostOnly drops the port of host:port (and the brackets of an IPv6 host).
func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return hostport
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// RemoteOptions are the go-containerregistry options a pull uses (auth,
// transport guard, platform); a Verifier receives the same ones.
func (o Options) RemoteOptions(ctx context.Context) []remote.Option {
	base := o.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	plat := v1.Platform{OS: "linux", Architecture: "amd64"}
	if o.Platform != nil {
		plat = *o.Platform
	}
	ro := []remote.Option{
		remote.WithContext(ctx),
		remote.WithTransport(guard{base: base, allow: o.AllowPlainHTTPLoopback, insecure: o.InsecureRegistries}),
		remote.WithPlatform(plat),
	}
	if o.Auth != nil {
		ro = append(ro, remote.WithAuthFromKeychain(o.Auth))
	}
	return ro
}

// Pull fetches image and unpacks it into rootfs, which must not exist or be
// an empty directory. On any error rootfs is left as it was.
func Pull(ctx context.Context, image, rootfs string, o Options) (*Result, error) {
	ref, err := name.ParseReference(image)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %w", image, err)
	}
	if reg := ref.Context().RegistryStr(); (o.AllowPlainHTTPLoopback && isLoopback(hostOnly(reg))) || slices.Contains(o.InsecureRegistries, reg) {
		// name.Insecure lets the registry client fall back to http://;
		// the transport guard still decides which hosts it may reach.
		if ref, err = name.ParseReference(image, name.Insecure); err != nil {
			return nil, fmt.Errorf("image reference %q: %w", image, err)
		}
	}
	ro := o.RemoteOptions(ctx)
	desc, err := remote.Get(ref, ro...)
	if err != nil {
		return nil, fmt.Errorf("image %s: manifest: %w", ref, err)
	}
	if o.Verifier != nil {
		if err := o.Verifier.Verify(ctx, ref, desc.Digest, ro...); err != nil {
			return nil, fmt.Errorf("image %s (%s) denied: %w", ref, desc.Digest, err)
		}
	}
	img, err := desc.Image() // resolves an index to the requested platform
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", ref, err)
	}
	mf, err := img.Manifest()
	if err != nil {
		return nil, fmt.Errorf("image %s: manifest: %w", ref, err)
	}
	imgDigest, err := img.Digest()
	if err != nil {
		return nil, err
	}
	rawCfg, err := img.RawConfigFile()
	if err != nil {
		return nil, fmt.Errorf("image %s: config: %w", ref, err)
	}
	if sum := sha256.Sum256(rawCfg); "sha256:"+hex.EncodeToString(sum[:]) != mf.Config.Digest.String() {
		return nil, fmt.Errorf("image %s: config: %w", ref, &DigestMismatchError{Want: mf.Config.Digest.String(), Got: "sha256:" + hex.EncodeToString(sum[:])})
	}
	cfg, err := v1.ParseConfigFile(bytes.NewReader(rawCfg))
	if err != nil {
		return nil, fmt.Errorf("image %s: config: %w", ref, err)
	}
	if len(cfg.RootFS.DiffIDs) != len(mf.Layers) {
		return nil, fmt.Errorf("image %s: %d layers but %d diff_ids", ref, len(mf.Layers), len(cfg.RootFS.DiffIDs))
	}
	for _, l := range mf.Layers {
		if isEncrypted(string(l.MediaType)) && o.Decrypter == nil {
			return nil, fmt.Errorf("image %s: layer %s (%s): %w", ref, l.Digest, l.MediaType, ErrEncryptedLayer)
		}
	}

	cache := o.Cache
	if cache == nil {
		dir, err := os.MkdirTemp("", "cocoon-layers-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		if cache, err = NewCache(dir); err != nil {
			return nil, err
		}
	}
	jobs := o.Jobs
	if jobs <= 0 {
		jobs = 4
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(jobs)
	for _, l := range mf.Layers {
		g.Go(func() error { return cache.ensure(gctx, ref.Context(), l, ro) })
	}
	if err := g.Wait(); err != nil {
		return nil, fmt.Errorf("image %s: %w", ref, err)
	}

	staging, err := prepareStaging(rootfs)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(staging)
		}
	}()
	for i, l := range mf.Layers {
		if err := applyCached(ctx, cache, l, cfg.RootFS.DiffIDs[i], staging, o); err != nil {
			return nil, fmt.Errorf("image %s: layer %d (%s): %w", ref, i, l.Digest, err)
		}
	}
	if err := commitStaging(staging, rootfs); err != nil {
		return nil, err
	}
	ok = true
	return &Result{Digest: desc.Digest, ImageDigest: imgDigest, Config: cfg, Layers: mf.Layers}, nil
}

func isEncrypted(mediaType string) bool { return strings.HasSuffix(mediaType, "+encrypted") }

func prepareStaging(rootfs string) (string, error) {
	rootfs = filepath.Clean(rootfs)
	if ents, err := os.ReadDir(rootfs); err == nil && len(ents) > 0 {
		return "", fmt.Errorf("rootfs %s is not empty", rootfs)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("rootfs %s: %w", rootfs, err)
	}
	if err := os.MkdirAll(filepath.Dir(rootfs), 0o755); err != nil {
		return "", err
	}
	staging, err := os.MkdirTemp(filepath.Dir(rootfs), "."+filepath.Base(rootfs)+".unpacking-")
	if err != nil {
		return "", err
	}
	return staging, os.Chmod(staging, 0o755)
}

func commitStaging(staging, rootfs string) error {
	rootfs = filepath.Clean(rootfs)
	if err := os.Remove(rootfs); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("rootfs %s: %w", rootfs, err)
	}
	if err := os.Rename(staging, rootfs); err != nil {
		return fmt.Errorf("rootfs %s: %w", rootfs, err)
	}
	return nil
}

// applyCached decompresses one cached blob, unpacks it and checks that the
// uncompressed stream hashes to diffID.
func applyCached(ctx context.Context, cache *Cache, l v1.Descriptor, diffID v1.Hash, dir string, o Options) error {
	f, err := cache.Open(l.Digest)
	if err != nil {
		return err
	}
	defer f.Close()
	var blob io.Reader = f
	var decrypted io.ReadCloser
	if isEncrypted(string(l.MediaType)) {
		rc, err := o.Decrypter.Decrypt(ctx, l, f)
		if err != nil {
			return fmt.Errorf("decrypt: %w", err)
		}
		defer func() {
			if decrypted != nil {
				decrypted.Close()
			}
		}()
		decrypted, blob = rc, rc
	}
	plain, closeFn, err := decompress(blob)
	if err != nil {
		return err
	}
	defer closeFn()
	h := sha256.New()
	tee := io.TeeReader(plain, h)
	if err := unpack.Layer(dir, tee, o.Unpack); err != nil {
		return err
	}
	// The tar end-of-archive padding belongs to the diff_id too.
	if _, err := io.Copy(io.Discard, tee); err != nil {
		return fmt.Errorf("decompress: %w", err)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != diffID.String() {
		return fmt.Errorf("uncompressed content: %w", &DigestMismatchError{Want: diffID.String(), Got: got})
	}
	if decrypted != nil {
		// A decompressor may stop before the ciphertext's end; Close
		// checks what it left unread (the decrypter's HMAC and digest).
		err := decrypted.Close()
		decrypted = nil
		if err != nil {
			return fmt.Errorf("decrypt: %w", err)
		}
	}
	return nil
}

// decompress recognises gzip and zstd by their magic bytes; anything else is
// taken as an uncompressed tar.
func decompress(r io.Reader) (io.Reader, func(), error) {
	br := bufio.NewReaderSize(r, 1<<16)
	magic, _ := br.Peek(4)
	switch {
	case len(magic) >= 2 && magic[0] == 0x1f && magic[1] == 0x8b:
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, fmt.Errorf("gzip: %w", err)
		}
		return zr, func() { zr.Close() }, nil
	case bytes.Equal(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br)
		if err != nil {
			return nil, nil, fmt.Errorf("zstd: %w", err)
		}
		return zr, zr.Close, nil
	}
	return br, func() {}, nil
}
