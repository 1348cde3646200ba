// Package decrypt opens ocicrypt-encrypted image layers whose layer key was
// wrapped for the Confidential Containers attestation-agent key provider:
// the key-encryption key lives in a KBS as a resource and is released only to
// an attested guest.
//
// An encrypted layer carries two annotations. The public one
// (org.opencontainers.image.enc.pubopts) names the layer cipher and holds the
// ciphertext's HMAC. The key provider one
// (org.opencontainers.image.enc.keys.provider.attestation-agent) is
// base64 of a JSON packet {"kid", "wrapped_data", "iv", "wrap_type"}: kid is
// kbs:///<repo>/<type>/<tag>, the KBS resource holding a 32-byte AES key, and
// wrapped_data is AES-256-GCM of ocicrypt's private layer options (the layer's
// symmetric key and the plain layer's digest) under that key.
//
// The Decrypter fetches the key once per kid, unwraps the private options,
// decrypts the layer with ocicrypt's block cipher and checks both the
// ciphertext's HMAC and the plain layer's digest before it reports the end
// of the stream.
package decrypt

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/containers/ocicrypt/blockcipher"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/cocoon-containers/cocoon/kbs-client/protocol"
)

const (
	// AnnotationKeyProvider holds the wrapped layer options for the
	// attestation-agent key provider.
	AnnotationKeyProvider = "org.opencontainers.image.enc.keys.provider.attestation-agent"
	// AnnotationPubOpts holds ocicrypt's public layer options.
	AnnotationPubOpts = "org.opencontainers.image.enc.pubopts"
	// WrapTypeA256GCM is the only wrap_type accepted.
	WrapTypeA256GCM = "A256GCM"
	// KidScheme prefixes a kid that names a KBS resource.
	KidScheme = protocol.ResourceURIScheme

	keySize   = 32
	ivSize    = 12
	maxPacket = 64 << 10
)

// KeyFetcher returns a KBS resource, "<repo>/<type>/<tag>", after whatever
// attestation the KBS asks for. *kbs-client/client.Client implements it.
type KeyFetcher interface {
	GetResource(ctx context.Context, path string) ([]byte, error)
}

// Decrypter implements image/pull.LayerDecrypter. Keys fetched from the KBS
// stay cached per kid until Forget, so layers shared by several images or
// containers cost one fetch. It is safe for concurrent use.
type Decrypter struct {
	fetcher KeyFetcher

	mu   sync.Mutex
	keys map[string]*keyEntry
}

// keyEntry is one kid's key; ready closes once the fetch finished. Only
// the AES-GCM instance is kept, the raw key bytes are zeroed.
type keyEntry struct {
	ready chan struct{}
	aead  cipher.AEAD
	err   error
}

// New returns a Decrypter that asks f for key-encryption keys.
func New(f KeyFetcher) *Decrypter {
	return &Decrypter{fetcher: f, keys: map[string]*keyEntry{}}
}

// Forget drops every cached key; later layers fetch them again.
func (d *Decrypter) Forget() {
	d.mu.Lock()
	d.keys = map[string]*keyEntry{}
	d.mu.Unlock()
}

// packet is the attestation-agent key provider annotation (the format
// CoCo's guest-components call AnnotationPacket, version 1).
type packet struct {
	Kid         string `json:"kid"`
	WrappedData string `json:"wrapped_data"`
	IV          string `json:"iv"`
	WrapType    string `json:"wrap_type"`
}

// IsEncrypted reports whether a layer media type is an ocicrypt one.
func IsEncrypted(mediaType string) bool { return strings.HasSuffix(mediaType, "+encrypted") }

// Decrypt returns the plain (still compressed) layer. Reading it to the end
// yields io.EOF only when the ciphertext's HMAC and the plain digest both
// matched; otherwise the last Read, or Close when the reader stopped early,
// returns the error. Closing does not close blob.
func (d *Decrypter) Decrypt(ctx context.Context, layer v1.Descriptor, blob io.Reader) (io.ReadCloser, error) {
	if !IsEncrypted(string(layer.MediaType)) {
		return nil, fmt.Errorf("layer %s: media type %q is not an encrypted one", layer.Digest, layer.MediaType)
	}
	ann := layer.Annotations[AnnotationKeyProvider]
	if ann == "" {
		return nil, fmt.Errorf("layer %s is encrypted but has no attestation-agent key provider annotation (%s)", layer.Digest, AnnotationKeyProvider)
	}
	pub, err := publicOptions(layer.Annotations[AnnotationPubOpts])
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w", layer.Digest, err)
	}
	priv, err := d.privateOptions(ctx, ann)
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w", layer.Digest, err)
	}
	want := priv.Digest

	src := &sourceReader{r: blob}
	h, err := blockcipher.NewLayerBlockCipherHandler()
	if err != nil {
		zero(priv.SymmetricKey)
		return nil, err
	}
	plain, _, err := h.Decrypt(src, blockcipher.LayerBlockCipherOptions{Public: pub, Private: priv})
	// The cipher keeps its own expanded key and HMAC pads; the raw layer
	// key is not needed any more.
	zero(priv.SymmetricKey)
	if err != nil {
		return nil, fmt.Errorf("layer %s: setting up the layer cipher: %w", layer.Digest, err)
	}
	return &plainReader{ctx: ctx, layer: layer.Digest.String(), src: src, r: plain, v: want.Verifier()}, nil
}

// publicOptions decodes and checks the pubopts annotation.
func publicOptions(s string) (blockcipher.PublicLayerBlockCipherOptions, error) {
	var pub blockcipher.PublicLayerBlockCipherOptions
	if s == "" {
		return pub, fmt.Errorf("no %s annotation", AnnotationPubOpts)
	}
	raw, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return pub, fmt.Errorf("%s annotation is not base64", AnnotationPubOpts)
	}
	if err := json.Unmarshal(raw, &pub); err != nil {
		return pub, fmt.Errorf("%s annotation is not ocicrypt's public options JSON: %w", AnnotationPubOpts, err)
	}
	if pub.CipherType != blockcipher.AES256CTR {
		return pub, fmt.Errorf("layer cipher %q not supported (want %s)", pub.CipherType, blockcipher.AES256CTR)
	}
	if len(pub.Hmac) == 0 {
		return pub, fmt.Errorf("%s annotation has no HMAC", AnnotationPubOpts)
	}
	return pub, nil
}

// privateOptions unwraps the first packet of the annotation (ocicrypt
// joins one per recipient with commas) that a key from the KBS opens.
func (d *Decrypter) privateOptions(ctx context.Context, ann string) (blockcipher.PrivateLayerBlockCipherOptions, error) {
	var errs []error
	for i, enc := range strings.Split(ann, ",") {
		priv, err := d.unwrapPacket(ctx, enc)
		if err == nil {
			return priv, nil
		}
		if strings.Contains(ann, ",") {
			err = fmt.Errorf("key provider packet %d: %w", i, err)
		}
		errs = append(errs, err)
	}
	return blockcipher.PrivateLayerBlockCipherOptions{}, errors.Join(errs...)
}

func (d *Decrypter) unwrapPacket(ctx context.Context, enc string) (blockcipher.PrivateLayerBlockCipherOptions, error) {
	var priv blockcipher.PrivateLayerBlockCipherOptions
	p, path, wrapped, iv, err := parsePacket(enc)
	if err != nil {
		return priv, err
	}
	aead, err := d.key(ctx, p.Kid, path)
	if err != nil {
		return priv, err
	}
	optsJSON, err := aead.Open(nil, iv, wrapped, nil)
	if err != nil {
		return priv, fmt.Errorf("unwrapping layer key for kid %s: authentication failed", p.Kid)
	}
	defer zero(optsJSON)
	if err := json.Unmarshal(optsJSON, &priv); err != nil {
		// json's error may quote the input; keep it out of the message.
		return priv, fmt.Errorf("kid %s: unwrapped layer options are not ocicrypt's private options JSON", p.Kid)
	}
	if len(priv.SymmetricKey) != keySize {
		zero(priv.SymmetricKey)
		return priv, fmt.Errorf("kid %s: unwrapped layer key has %d bytes, want %d", p.Kid, len(priv.SymmetricKey), keySize)
	}
	if err := priv.Digest.Validate(); err != nil {
		zero(priv.SymmetricKey)
		return priv, fmt.Errorf("kid %s: unwrapped layer options carry no valid digest: %w", p.Kid, err)
	}
	return priv, nil
}

// parsePacket decodes one base64 packet and checks every field.
func parsePacket(enc string) (p packet, path string, wrapped, iv []byte, err error) {
	if len(enc) > maxPacket {
		return p, "", nil, nil, fmt.Errorf("key provider annotation over %d bytes", maxPacket)
	}
	raw, err := base64.StdEncoding.DecodeString(enc)
	if err != nil {
		return p, "", nil, nil, errors.New("key provider annotation is not base64")
	}
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			// A syntax error quotes the offending byte, which may belong
			// to the wrapped key: give only the offset.
			err = fmt.Errorf("malformed JSON at byte %d", se.Offset)
		}
		return p, "", nil, nil, fmt.Errorf("key provider annotation is not an attestation-agent packet {kid, wrapped_data, iv, wrap_type}: %w", err)
	}
	if dec.More() {
		return p, "", nil, nil, errors.New("key provider annotation has data after its JSON packet")
	}
	if path, err = KidPath(p.Kid); err != nil {
		return p, "", nil, nil, err
	}
	if p.WrapType != WrapTypeA256GCM {
		return p, "", nil, nil, fmt.Errorf("kid %s: wrap_type %q not supported (want %s)", p.Kid, p.WrapType, WrapTypeA256GCM)
	}
	if iv, err = base64.StdEncoding.DecodeString(p.IV); err != nil {
		return p, "", nil, nil, fmt.Errorf("kid %s: iv is not base64", p.Kid)
	}
	if len(iv) != ivSize {
		return p, "", nil, nil, fmt.Errorf("kid %s: iv has %d bytes, want %d", p.Kid, len(iv), ivSize)
	}
	if wrapped, err = base64.StdEncoding.DecodeString(p.WrappedData); err != nil {
		return p, "", nil, nil, fmt.Errorf("kid %s: wrapped_data is not base64", p.Kid)
	}
	if len(wrapped) <= 16 {
		return p, "", nil, nil, fmt.Errorf("kid %s: wrapped_data has %d bytes, too short for AES-GCM", p.Kid, len(wrapped))
	}
	return p, path, wrapped, iv, nil
}

// KidPath checks that kid is kbs:///<repo>/<type>/<tag> and returns the
// resource path "<repo>/<type>/<tag>".
func KidPath(kid string) (string, error) {
	path, ok, err := protocol.ResourceURIPath(kid)
	if !ok {
		return "", fmt.Errorf("kid %q is not a %s<repo>/<type>/<tag> URI", kid, KidScheme)
	}
	if err != nil {
		return "", fmt.Errorf("kid %q: %w", kid, err)
	}
	return path, nil
}

// key returns the AES-GCM instance for kid, fetching the key on first use.
// Concurrent callers for one kid share a fetch; a failed fetch is not
// cached.
func (d *Decrypter) key(ctx context.Context, kid, path string) (cipher.AEAD, error) {
	for {
		d.mu.Lock()
		e, ok := d.keys[kid]
		if !ok {
			e = &keyEntry{ready: make(chan struct{})}
			d.keys[kid] = e
			d.mu.Unlock()
			e.aead, e.err = d.fetch(ctx, kid, path)
			if e.err != nil {
				d.mu.Lock()
				if d.keys[kid] == e {
					delete(d.keys, kid)
				}
				d.mu.Unlock()
			}
			close(e.ready)
			return e.aead, e.err
		}
		d.mu.Unlock()
		select {
		case <-e.ready:
		case <-ctx.Done():
			return nil, fmt.Errorf("fetching key %s: %w", kid, ctx.Err())
		}
		if e.err == nil {
			return e.aead, nil
		}
		// Another caller's fetch failed, perhaps for its own context;
		// try again with ours unless ours is done.
		if ctx.Err() != nil {
			return nil, fmt.Errorf("fetching key %s: %w", kid, ctx.Err())
		}
	}
}

func (d *Decrypter) fetch(ctx context.Context, kid, path string) (cipher.AEAD, error) {
	k, err := d.fetcher.GetResource(ctx, path)
	if err != nil {
		return nil, fmt.Errorf("fetching key %s: %w", kid, err)
	}
	defer zero(k)
	if len(k) != keySize {
		return nil, fmt.Errorf("key %s from the KBS has %d bytes, want %d for %s", kid, len(k), keySize, WrapTypeA256GCM)
	}
	b, err := aes.NewCipher(k)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

func zero(b []byte) { clear(b) }

// sourceReader remembers the ciphertext source's own error so that it can
// be told apart from the cipher's verdict.
type sourceReader struct {
	r   io.Reader
	err error
}

func (s *sourceReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF {
		s.err = err
	}
	return n, err
}

// plainReader hashes the plain layer while it is read and turns the end of
// the stream into io.EOF only when the digest matched.
type plainReader struct {
	ctx   context.Context
	layer string
	src   *sourceReader
	r     io.Reader
	v     digest.Verifier
	done  bool
	err   error
}

func (p *plainReader) Read(b []byte) (int, error) {
	if p.err != nil {
		return 0, p.err
	}
	if p.done {
		return 0, io.EOF
	}
	n, err := p.r.Read(b)
	p.v.Write(b[:n])
	switch {
	case err == io.EOF:
		if !p.v.Verified() {
			p.err = fmt.Errorf("layer %s: decrypted layer does not match the digest in its private options", p.layer)
			return n, p.err
		}
		p.done = true
	case err != nil && p.src.err != nil && errors.Is(err, p.src.err):
		p.err = fmt.Errorf("layer %s: reading ciphertext: %w", p.layer, err)
		return n, p.err
	case err != nil:
		// ocicrypt's own error; its text carries HMAC values, not ours to show.
		p.err = fmt.Errorf("layer %s: ciphertext authentication failed (HMAC mismatch): the layer was altered or its public options do not belong to it", p.layer)
		return n, p.err
	}
	return n, err
}

// Close checks a stream its reader left unfinished by reading the rest,
// so that a consumer that stops early still learns of tampering.
func (p *plainReader) Close() error {
	if p.err != nil || p.done {
		return p.err
	}
	buf := make([]byte, 32<<10)
	defer clear(buf)
	for p.err == nil && !p.done {
		if err := p.ctx.Err(); err != nil {
			return err
		}
		p.Read(buf)
	}
	return p.err
}
