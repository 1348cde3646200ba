package decrypt_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/cocoon-containers/cocoon/image/decrypt"
	"github.com/cocoon-containers/cocoon/image/pull"
)

const (
	kid1  = "kbs:///default/key/1"
	path1 = "default/key/1"
)

// TestSkopeoEncryptedImagePulls: skopeo leaves every layer +encrypted with
// public options, the layers carry attestation-agent packets for the kid,
// and a pull with the right key from the KBS yields the files. Both layers
// and a second pull cost one key fetch, and the fetched key bytes are
// zeroed.
func TestSkopeoEncryptedImagePulls(t *testing.T) {
	key := newKey(t)
	e := encryptWithSkopeo(t, kid1, key)
	if len(e.Manifest.Layers) != 2 {
		t.Fatalf("%d layers, want 2", len(e.Manifest.Layers))
	}
	for i, l := range e.Manifest.Layers {
		if l.MediaType != "application/vnd.oci.image.layer.v1.tar+gzip+encrypted" {
			t.Errorf("layer %d media type %s, want the gzip +encrypted one", i, l.MediaType)
		}
		p := decodePacket(t, l.Annotations[decrypt.AnnotationKeyProvider])
		if p.Kid != kid1 || p.WrapType != "A256GCM" {
			t.Errorf("layer %d packet kid %q wrap_type %q", i, p.Kid, p.WrapType)
		}
		if l.Annotations[decrypt.AnnotationPubOpts] == "" {
			t.Errorf("layer %d has no public options", i)
		}
	}

	f := newFetcher(path1, key)
	d := decrypt.New(f)
	rootfs := filepath.Join(t.TempDir(), "rootfs")
	res, err := pull.Pull(context.Background(), e.Ref, rootfs, pullOpts(d))
	if err != nil {
		t.Fatal(err)
	}
	checkFiles(t, rootfs)
	plainCfg, err := e.Plain.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if !slicesEqual(res.Config.RootFS.DiffIDs, plainCfg.RootFS.DiffIDs) {
		t.Errorf("diff_ids %v, want the plain image's %v", res.Config.RootFS.DiffIDs, plainCfg.RootFS.DiffIDs)
	}

	again := filepath.Join(t.TempDir(), "rootfs")
	if _, err := pull.Pull(context.Background(), e.Ref, again, pullOpts(d)); err != nil {
		t.Fatal(err)
	}
	checkFiles(t, again)
	if n := f.calls.Load(); n != 1 {
		t.Errorf("%d key fetches for two layers in two pulls, want 1", n)
	}
	for i, h := range f.handed {
		if !bytes.Equal(h, make([]byte, len(h))) {
			t.Errorf("fetched key %d was not zeroed", i)
		}
	}
}

func slicesEqual(a, b []v1.Hash) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestPullWrongKeyFromKBS: a 32-byte key that is not the wrapping key
// fails the unwrap with a message naming the kid, and no rootfs appears.
func TestPullWrongKeyFromKBS(t *testing.T) {
	key := newKey(t)
	e := encryptWithSkopeo(t, kid1, key)
	wrong := newKey(t)
	rootfs := filepath.Join(t.TempDir(), "rootfs")
	_, err := pull.Pull(context.Background(), e.Ref, rootfs, pullOpts(decrypt.New(newFetcher(path1, wrong))))
	if err == nil {
		t.Fatal("pull with the wrong key succeeded")
	}
	if !strings.Contains(err.Error(), "unwrapping layer key for kid kbs:///default/key/1: authentication failed") {
		t.Errorf("error %q does not say the unwrap failed for the kid", err)
	}
	noSecret(t, err.Error(), key, wrong)
	noRootfs(t, rootfs)
}

// TestPullKBSRefuses: when the KBS will not release the key (attestation
// or policy), the pull fails with the fetcher's error under the kid.
func TestPullKBSRefuses(t *testing.T) {
	key := newKey(t)
	e := encryptWithSkopeo(t, kid1, key)
	f := newFetcher(path1, key)
	f.err = errKBS
	rootfs := filepath.Join(t.TempDir(), "rootfs")
	_, err := pull.Pull(context.Background(), e.Ref, rootfs, pullOpts(decrypt.New(f)))
	if !errors.Is(err, errKBS) {
		t.Fatalf("error %v does not wrap the KBS's", err)
	}
	if !strings.Contains(err.Error(), "fetching key kbs:///default/key/1: "+errKBS.Error()) {
		t.Errorf("error %q does not name the kid", err)
	}
	noSecret(t, err.Error(), key)
	noRootfs(t, rootfs)
}

// opened is a layer's packet opened with the test's key.
type opened struct {
	packet packet
	iv     []byte
	opts   map[string]any // the private options JSON
	symKey []byte
}

func openPacket(t *testing.T, key []byte, l v1.Descriptor) opened {
	t.Helper()
	p := decodePacket(t, l.Annotations[decrypt.AnnotationKeyProvider])
	iv, _ := base64.StdEncoding.DecodeString(p.IV)
	wrapped, _ := base64.StdEncoding.DecodeString(p.WrappedData)
	plain, err := gcm(t, key).Open(nil, iv, wrapped, nil)
	if err != nil {
		t.Fatalf("opening the packet with the test key: %v", err)
	}
	var opts map[string]any
	if err := json.Unmarshal(plain, &opts); err != nil {
		t.Fatal(err)
	}
	sk, err := base64.StdEncoding.DecodeString(opts["symkey"].(string))
	if err != nil || len(sk) != 32 {
		t.Fatalf("private options symkey: %v (%d bytes)", err, len(sk))
	}
	return opened{packet: p, iv: iv, opts: opts, symKey: sk}
}

// rewrap seals opts under key into a packet for kid.
func rewrap(t *testing.T, key []byte, kid string, opts map[string]any) string {
	t.Helper()
	b, err := json.Marshal(opts)
	if err != nil {
		t.Fatal(err)
	}
	iv := make([]byte, 12)
	rand.Read(iv)
	return encodePacket(t, packet{
		Kid:         kid,
		WrappedData: base64.StdEncoding.EncodeToString(gcm(t, key).Seal(nil, iv, b, nil)),
		IV:          base64.StdEncoding.EncodeToString(iv),
		WrapType:    "A256GCM",
	})
}

func withAnnotation(l v1.Descriptor, k, v string) v1.Descriptor {
	l.Annotations = maps.Clone(l.Annotations)
	if v == "" {
		delete(l.Annotations, k)
	} else {
		l.Annotations[k] = v
	}
	return l
}

// TestDecryptRefusesBadAnnotations: each malformed or unsupported part of
// the annotations is refused with its own error, before any key fetch
// when the packet itself is wrong, and no error shows key material.
func TestDecryptRefusesBadAnnotations(t *testing.T) {
	key := newKey(t)
	e := encryptWithSkopeo(t, kid1, key)
	l := e.Manifest.Layers[0]
	blob := e.blob(t, l.Digest)
	o := openPacket(t, key, l)
	wrapped, _ := base64.StdEncoding.DecodeString(o.packet.WrappedData)

	withPacket := func(edit func(p *packet)) v1.Descriptor {
		p := o.packet
		edit(&p)
		return withAnnotation(l, decrypt.AnnotationKeyProvider, encodePacket(t, p))
	}
	flipped := bytes.Clone(wrapped)
	flipped[len(flipped)/2] ^= 0x01
	pubopts := func(v any) string {
		b, _ := json.Marshal(v)
		return base64.StdEncoding.EncodeToString(b)
	}
	var pub map[string]any
	pb, _ := base64.StdEncoding.DecodeString(l.Annotations[decrypt.AnnotationPubOpts])
	json.Unmarshal(pb, &pub)
	otherCipher := maps.Clone(pub)
	otherCipher["cipher"] = "AES_128_GCM"
	noHmac := maps.Clone(pub)
	delete(noHmac, "hmac")

	cases := []struct {
		name      string
		layer     v1.Descriptor
		kbsKey    []byte // default: the right key
		want      string
		noFetches bool
	}{
		{name: "no key provider annotation", layer: withAnnotation(l, decrypt.AnnotationKeyProvider, ""),
			want: "layer " + l.Digest.String() + " is encrypted but has no attestation-agent key provider annotation", noFetches: true},
		{name: "plain media type", layer: func() v1.Descriptor { c := l; c.MediaType = "application/vnd.oci.image.layer.v1.tar+gzip"; return c }(),
			want: "is not an encrypted one", noFetches: true},
		{name: "annotation not base64", layer: withAnnotation(l, decrypt.AnnotationKeyProvider, "%%%"),
			want: "key provider annotation is not base64", noFetches: true},
		{name: "annotation not JSON", layer: withAnnotation(l, decrypt.AnnotationKeyProvider, base64.StdEncoding.EncodeToString([]byte(`{"kid": "`+o.packet.WrappedData))),
			want: "is not an attestation-agent packet", noFetches: true},
		{name: "packet with unknown field", layer: withAnnotation(l, decrypt.AnnotationKeyProvider, encodePacket(t, map[string]string{
			"version": "0.1.0", "kid": kid1, "wrapped_data": o.packet.WrappedData, "iv": o.packet.IV, "wrap_type": "A256GCM"})),
			want: `unknown field "version"`, noFetches: true},
		{name: "kid with a host", layer: withPacket(func(p *packet) { p.Kid = "kbs://kbs.example/default/key/1" }),
			want: "is not a kbs:///<repo>/<type>/<tag> URI", noFetches: true},
		{name: "kid of another scheme", layer: withPacket(func(p *packet) { p.Kid = "https://kbs/default/key/1" }),
			want: "is not a kbs:///<repo>/<type>/<tag> URI", noFetches: true},
		{name: "kid with two segments", layer: withPacket(func(p *packet) { p.Kid = "kbs:///default/key" }),
			want: `kid "kbs:///default/key"`, noFetches: true},
		{name: "kid with four segments", layer: withPacket(func(p *packet) { p.Kid = "kbs:///default/key/1/2" }),
			want: `kid "kbs:///default/key/1/2"`, noFetches: true},
		{name: "kid with dot-dot", layer: withPacket(func(p *packet) { p.Kid = "kbs:///default/../1" }),
			want: `kid "kbs:///default/../1"`, noFetches: true},
		{name: "kid with an empty segment", layer: withPacket(func(p *packet) { p.Kid = "kbs:///default//1" }),
			want: `kid "kbs:///default//1"`, noFetches: true},
		{name: "kid with a query", layer: withPacket(func(p *packet) { p.Kid = "kbs:///default/key/1?x=y" }),
			want: `kid "kbs:///default/key/1?x=y"`, noFetches: true},
		{name: "wrap type A128GCM", layer: withPacket(func(p *packet) { p.WrapType = "A128GCM" }),
			want: `wrap_type "A128GCM" not supported (want A256GCM)`, noFetches: true},
		{name: "no wrap type", layer: withPacket(func(p *packet) { p.WrapType = "" }),
			want: `wrap_type "" not supported`, noFetches: true},
		{name: "iv of 16 bytes", layer: withPacket(func(p *packet) { p.IV = base64.StdEncoding.EncodeToString(make([]byte, 16)) }),
			want: "iv has 16 bytes, want 12", noFetches: true},
		{name: "iv not base64", layer: withPacket(func(p *packet) { p.IV = "!!" }),
			want: "iv is not base64", noFetches: true},
		{name: "wrapped_data not base64", layer: withPacket(func(p *packet) { p.WrappedData = "!" + p.WrappedData }),
			want: "wrapped_data is not base64", noFetches: true},
		{name: "wrapped_data too short", layer: withPacket(func(p *packet) { p.WrappedData = base64.StdEncoding.EncodeToString(wrapped[:16]) }),
			want: "wrapped_data has 16 bytes", noFetches: true},
		{name: "no public options", layer: withAnnotation(l, decrypt.AnnotationPubOpts, ""),
			want: "no org.opencontainers.image.enc.pubopts annotation", noFetches: true},
		{name: "public options not base64", layer: withAnnotation(l, decrypt.AnnotationPubOpts, "%"),
			want: "pubopts annotation is not base64", noFetches: true},
		{name: "other layer cipher", layer: withAnnotation(l, decrypt.AnnotationPubOpts, pubopts(otherCipher)),
			want: `layer cipher "AES_128_GCM" not supported`, noFetches: true},
		{name: "public options without HMAC", layer: withAnnotation(l, decrypt.AnnotationPubOpts, pubopts(noHmac)),
			want: "has no HMAC", noFetches: true},
		{name: "corrupted wrapped_data", layer: withPacket(func(p *packet) { p.WrappedData = base64.StdEncoding.EncodeToString(flipped) }),
			want: "unwrapping layer key for kid kbs:///default/key/1: authentication failed"},
		{name: "iv not the one sealed with", layer: withPacket(func(p *packet) { p.IV = base64.StdEncoding.EncodeToString(make([]byte, 12)) }),
			want: "unwrapping layer key for kid kbs:///default/key/1: authentication failed"},
		{name: "packet for another kid", layer: withPacket(func(p *packet) { p.Kid = "kbs:///other/key/9" }),
			want: "fetching key kbs:///other/key/9: kbs: 404 ResourceNotFound"},
		{name: "KBS key of 31 bytes", layer: l, kbsKey: key[:31],
			want: "key kbs:///default/key/1 from the KBS has 31 bytes, want 32"},
		{name: "KBS key of 64 bytes", layer: l, kbsKey: append(bytes.Clone(key), key...),
			want: "key kbs:///default/key/1 from the KBS has 64 bytes, want 32"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			k := c.kbsKey
			if k == nil {
				k = key
			}
			f := newFetcher(path1, k)
			rc, err := decrypt.New(f).Decrypt(context.Background(), c.layer, bytes.NewReader(blob))
			if err == nil {
				rc.Close()
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q, want it to contain %q", err, c.want)
			}
			if c.noFetches && f.calls.Load() != 0 {
				t.Errorf("%d key fetches for a layer refused on its annotations", f.calls.Load())
			}
			noSecret(t, err.Error(), key, wrapped, flipped, o.symKey)
			if strings.Contains(err.Error(), o.packet.WrappedData) || strings.Contains(err.Error(), o.packet.WrappedData[:16]) {
				t.Errorf("error %q shows wrapped_data", err)
			}
		})
	}
}

// TestDecryptedStreamIsTheOriginalLayer: decrypting a skopeo layer yields
// exactly the plain image's compressed layer, read in any chunking.
func TestDecryptedStreamIsTheOriginalLayer(t *testing.T) {
	key := newKey(t)
	e := encryptWithSkopeo(t, kid1, key)
	d := decrypt.New(newFetcher(path1, key))
	for i, l := range e.Manifest.Layers {
		rc, err := d.Decrypt(context.Background(), l, bytes.NewReader(e.blob(t, l.Digest)))
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(io.LimitReader(oneByte{rc}, 1<<30))
		if err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
		if err := rc.Close(); err != nil {
			t.Fatalf("layer %d close: %v", i, err)
		}
		if want := e.plainLayer(t, i); !bytes.Equal(got, want) {
			t.Errorf("layer %d: %d bytes decrypted differ from the %d plain ones", i, len(got), len(want))
		}
	}
}

// oneByte reads at most 7 bytes at a time.
type oneByte struct{ r io.Reader }

func (o oneByte) Read(p []byte) (int, error) { return o.r.Read(p[:min(len(p), 7)]) }

// TestTamperedCiphertextRefused: a flipped bit, a truncated blob and
// another layer's public options (so another HMAC) all end in an error
// at the end of the stream, never in io.EOF; a reader that stops early
// gets the error from Close.
func TestTamperedCiphertextRefused(t *testing.T) {
	key := newKey(t)
	e := encryptWithSkopeo(t, kid1, key)
	l := e.Manifest.Layers[1]
	blob := e.blob(t, l.Digest)
	o := openPacket(t, key, l)
	flipped := bytes.Clone(blob)
	flipped[len(flipped)/3] ^= 0x80
	otherPub := withAnnotation(l, decrypt.AnnotationPubOpts, e.Manifest.Layers[0].Annotations[decrypt.AnnotationPubOpts])

	cases := []struct {
		name  string
		layer v1.Descriptor
		blob  []byte
	}{
		{"bit flipped", l, flipped},
		{"truncated", l, blob[:len(blob)-100]},
		{"extended", l, append(bytes.Clone(blob), 0)},
		{"another layer's HMAC", otherPub, blob},
	}
	d := decrypt.New(newFetcher(path1, key))
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rc, err := d.Decrypt(context.Background(), c.layer, bytes.NewReader(c.blob))
			if err != nil {
				t.Fatal(err)
			}
			_, err = io.Copy(io.Discard, rc)
			if err == nil {
				t.Fatal("tampered ciphertext read to EOF")
			}
			if !strings.Contains(err.Error(), "ciphertext authentication failed (HMAC mismatch)") {
				t.Errorf("error %q", err)
			}
			if cerr := rc.Close(); cerr == nil {
				t.Error("Close after a failed read returned nil")
			}
			noSecret(t, err.Error(), key, o.symKey)

			rc, err = d.Decrypt(context.Background(), c.layer, bytes.NewReader(c.blob))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(rc, make([]byte, 100)); err != nil {
				t.Fatal(err)
			}
			if err := rc.Close(); err == nil || !strings.Contains(err.Error(), "HMAC mismatch") {
				t.Errorf("Close after a partial read: %v, want the HMAC error", err)
			}
		})
	}

	rc, err := d.Decrypt(context.Background(), l, bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(rc, make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	if err := rc.Close(); err != nil {
		t.Errorf("Close after a partial read of an intact layer: %v", err)
	}
}

// TestDigestInPrivateOptionsEnforced: private options that authenticate
// (sealed under the right key) but name another digest fail at the end
// of the stream; so do ones without a digest or with a short layer key.
func TestDigestInPrivateOptionsEnforced(t *testing.T) {
	key := newKey(t)
	e := encryptWithSkopeo(t, kid1, key)
	l := e.Manifest.Layers[0]
	blob := e.blob(t, l.Digest)
	o := openPacket(t, key, l)
	if o.opts["digest"] != e.plainDigest(t, 0) {
		t.Fatalf("private options digest %v, want the plain layer's %s", o.opts["digest"], e.plainDigest(t, 0))
	}

	other := maps.Clone(o.opts)
	sum := sha256.Sum256([]byte("another layer"))
	other["digest"] = "sha256:" + hex.EncodeToString(sum[:])
	d := decrypt.New(newFetcher(path1, key))
	rc, err := d.Decrypt(context.Background(), withAnnotation(l, decrypt.AnnotationKeyProvider, rewrap(t, key, kid1, other)), bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.Copy(io.Discard, rc)
	if err == nil || !strings.Contains(err.Error(), "decrypted layer does not match the digest in its private options") {
		t.Errorf("read with a wrong digest: %v", err)
	}
	if err != nil && (strings.Contains(err.Error(), hex.EncodeToString(sum[:])) || strings.Contains(err.Error(), e.plainDigest(t, 0))) {
		t.Errorf("error %q shows a digest of the plaintext", err)
	}

	for name, edit := range map[string]func(m map[string]any){
		"no digest":        func(m map[string]any) { delete(m, "digest") },
		"malformed digest": func(m map[string]any) { m["digest"] = "sha256:1234" },
		"short layer key":  func(m map[string]any) { m["symkey"] = base64.StdEncoding.EncodeToString(o.symKey[:16]) },
	} {
		t.Run(name, func(t *testing.T) {
			m := maps.Clone(o.opts)
			edit(m)
			rc, err := d.Decrypt(context.Background(), withAnnotation(l, decrypt.AnnotationKeyProvider, rewrap(t, key, kid1, m)), bytes.NewReader(blob))
			if err == nil {
				rc.Close()
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), "kid kbs:///default/key/1: unwrapped layer") {
				t.Errorf("error %q", err)
			}
			noSecret(t, err.Error(), key, o.symKey)
		})
	}
}

// plainDigest is the digest of the plain image's layer i.
func (e *encrypted) plainDigest(t *testing.T, i int) string {
	sum := sha256.Sum256(e.plainLayer(t, i))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// TestKeyFetchSharedAndRetried: concurrent layers with one kid share one
// fetch, another kid fetches its own key, a failed fetch is not cached,
// and Forget makes the next layer fetch again.
func TestKeyFetchSharedAndRetried(t *testing.T) {
	key := newKey(t)
	e := encryptWithSkopeo(t, kid1, key)
	l := e.Manifest.Layers[0]
	blob := e.blob(t, l.Digest)
	o := openPacket(t, key, l)
	key2 := newKey(t)
	l2 := withAnnotation(l, decrypt.AnnotationKeyProvider, rewrap(t, key2, "kbs:///default/key/2", o.opts))

	f := newFetcher(path1, key)
	f.keys["default/key/2"] = key2
	d := decrypt.New(f)
	decryptAll := func(l v1.Descriptor) error {
		rc, err := d.Decrypt(context.Background(), l, bytes.NewReader(blob))
		if err != nil {
			return err
		}
		defer rc.Close()
		_, err = io.Copy(io.Discard, rc)
		return err
	}

	f.mu.Lock() // hold every fetch until all goroutines wait for the key
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() { errs <- decryptAll(l) })
	}
	for f.calls.Load() == 0 {
		runtimeGosched()
	}
	f.mu.Unlock()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if n := f.calls.Load(); n != 1 {
		t.Errorf("%d fetches for 8 concurrent layers of one kid, want 1", n)
	}
	if err := decryptAll(l2); err != nil {
		t.Fatal(err)
	}
	if n := f.calls.Load(); n != 2 {
		t.Errorf("%d fetches after a second kid, want 2", n)
	}

	d.Forget()
	f.err = errKBS
	if err := decryptAll(l); !errors.Is(err, errKBS) {
		t.Fatalf("after Forget with the KBS refusing: %v", err)
	}
	f.err = nil
	if err := decryptAll(l); err != nil {
		t.Fatalf("a failed fetch was cached: %v", err)
	}
	if n := f.calls.Load(); n != 4 {
		t.Errorf("%d fetches, want 4 (refused one retried)", n)
	}
}

// TestContextEndsWaitForKey: a caller waiting for another caller's fetch
// gives up when its context ends.
func TestContextEndsWaitForKey(t *testing.T) {
	key := newKey(t)
	e := encryptWithSkopeo(t, kid1, key)
	l := e.Manifest.Layers[0]
	f := newFetcher(path1, key)
	d := decrypt.New(f)
	f.mu.Lock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		rc, err := d.Decrypt(context.Background(), l, bytes.NewReader(nil))
		if err == nil {
			rc.Close()
		}
	}()
	for f.calls.Load() == 0 {
		runtimeGosched()
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	res := make(chan error, 1)
	go func() {
		_, err := d.Decrypt(ctx, l, bytes.NewReader(nil))
		res <- err
	}()
	var err error
	select {
	case err = <-res:
	case <-time.After(10 * time.Second):
		t.Error("a caller with a cancelled context still waits for the key")
	}
	f.mu.Unlock()
	<-done
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "fetching key "+kid1) {
		t.Errorf("waiting with a cancelled context: %v", err)
	}
}

// failingReader gives n bytes of r, then err.
type failingReader struct {
	r   io.Reader
	n   int
	err error
}

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, f.err
	}
	k, err := f.r.Read(p[:min(len(p), f.n)])
	f.n -= k
	return k, err
}

// TestSourceErrorPassedThrough: an I/O error of the blob reader comes
// back as itself, not as an authentication failure.
func TestSourceErrorPassedThrough(t *testing.T) {
	key := newKey(t)
	e := encryptWithSkopeo(t, kid1, key)
	l := e.Manifest.Layers[1]
	ioErr := errors.New("disk on fire")
	src := &failingReader{r: bytes.NewReader(e.blob(t, l.Digest)), n: 50 << 10, err: ioErr}
	rc, err := decrypt.New(newFetcher(path1, key)).Decrypt(context.Background(), l, src)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	_, err = io.Copy(io.Discard, rc)
	if !errors.Is(err, ioErr) || !strings.Contains(err.Error(), "reading ciphertext") {
		t.Errorf("error %v, want the reader's under reading ciphertext", err)
	}
}

// TestPullRefusesTamperedLayerWithMatchingManifest: someone who controls
// the registry but not the key flips a ciphertext byte and points the
// manifest at the altered blob, so every registry digest matches. The
// HMAC check refuses the layer (the block cipher holds back the last
// 10 KiB of plaintext until the check, and the flip is in there) and no
// rootfs appears.
func TestPullRefusesTamperedLayerWithMatchingManifest(t *testing.T) {
	key := newKey(t)
	e := encryptWithSkopeo(t, kid1, key)
	l := e.Manifest.Layers[1]
	blob := e.blob(t, l.Digest)
	tampered := bytes.Clone(blob)
	tampered[len(tampered)-100] ^= 0x04
	e.replaceLayer(t, 1, tampered)

	rootfs := filepath.Join(t.TempDir(), "rootfs")
	_, err := pull.Pull(context.Background(), e.Ref, rootfs, pullOpts(decrypt.New(newFetcher(path1, key))))
	if err == nil {
		t.Fatal("pulled a layer whose ciphertext was altered")
	}
	if !strings.Contains(err.Error(), "ciphertext authentication failed (HMAC mismatch)") {
		t.Errorf("error %q", err)
	}
	noRootfs(t, rootfs)
}
