package policy

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"fmt"
	"hash"
	"io"

	"github.com/BurntSushi/toml"
	"github.com/containerd/errdefs"
)

// Initdata is a CoCo initdata document.
type Initdata struct {
	Version   string            `toml:"version"`
	Algorithm string            `toml:"algorithm"`
	Data      map[string]string `toml:"data"`
	// Raw is the document as received; its digest is what HOST_DATA binds.
	Raw []byte `toml:"-"`
}

// initdataMagic starts an initdata block device.
const initdataMagic = "initdata"

// ParseInitdata parses an initdata TOML document.
func ParseInitdata(b []byte) (*Initdata, error) {
	if len(b) > MaxPolicySize {
		return nil, fmt.Errorf("initdata of %d bytes exceeds %d: %w", len(b), MaxPolicySize, errdefs.ErrInvalidArgument)
	}
	var id Initdata
	if err := toml.Unmarshal(b, &id); err != nil {
		return nil, fmt.Errorf("parse initdata: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if id.Version == "" {
		return nil, fmt.Errorf("initdata has no version: %w", errdefs.ErrInvalidArgument)
	}
	if _, err := newHash(id.Algorithm); err != nil {
		return nil, err
	}
	id.Raw = append([]byte(nil), b...)
	return &id, nil
}

// asInitdata tells an initdata document from Rego: Rego does not parse as
// TOML with a version, an algorithm and a data table.
func asInitdata(b []byte) (*Initdata, bool) {
	id, err := ParseInitdata(b)
	if err != nil || id.Algorithm == "" || id.Data == nil {
		return nil, false
	}
	return id, true
}

func newHash(alg string) (hash.Hash, error) {
	switch alg {
	case "sha256":
		return sha256.New(), nil
	case "sha384":
		return sha512.New384(), nil
	case "sha512":
		return sha512.New(), nil
	}
	return nil, fmt.Errorf("initdata algorithm %q: want sha256, sha384 or sha512: %w", alg, errdefs.ErrInvalidArgument)
}

// Digest is the document's digest with its algorithm.
func (id *Initdata) Digest() []byte {
	h, err := newHash(id.Algorithm)
	if err != nil {
		return nil
	}
	h.Write(id.Raw)
	return h.Sum(nil)
}

// HostData is the digest truncated or zero-padded to 32 bytes.
func (id *Initdata) HostData() []byte {
	out := make([]byte, 32)
	copy(out, id.Digest())
	return out
}

// LoadInitdata reads an initdata block device: the magic "initdata", a
// little-endian u64 length, then that many bytes of gzip-compressed TOML.
func LoadInitdata(ctx context.Context, r io.Reader) (*Initdata, error) {
	var hdr [16]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, fmt.Errorf("read initdata header: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if string(hdr[:8]) != initdataMagic {
		return nil, fmt.Errorf("initdata device: bad magic: %w", errdefs.ErrInvalidArgument)
	}
	n := binary.LittleEndian.Uint64(hdr[8:])
	if n == 0 || n > MaxPolicySize {
		return nil, fmt.Errorf("initdata device: length %d out of range: %w", n, errdefs.ErrInvalidArgument)
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return nil, fmt.Errorf("read initdata payload: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	zr, err := gzip.NewReader(bytes.NewReader(payload))
	if err != nil {
		return nil, fmt.Errorf("initdata payload: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	doc, err := io.ReadAll(io.LimitReader(zr, MaxPolicySize+1))
	if err != nil {
		return nil, fmt.Errorf("initdata payload: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	return ParseInitdata(doc)
}

// ApplyInitdata installs the initdata's policy.rego after checking that the
// document's digest is the SNP report's HOST_DATA.
func (e *Enforcer) ApplyInitdata(ctx context.Context, id *Initdata) error {
	text, ok := id.Data["policy.rego"]
	if !ok {
		return fmt.Errorf("initdata has no policy.rego: %w", errdefs.ErrInvalidArgument)
	}
	return e.install(ctx, text, id.HostData(), "initdata "+id.Algorithm)
}
