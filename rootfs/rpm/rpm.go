// Package rpm reads RPM packages (format version 3 and 4, as rpm 4.x
// writes them): the lead, the signature header, the main header and the
// compressed cpio payload. It is what unpacks an Azure Linux kernel RPM
// without rpm2cpio. Every size in the file is checked before use.
package rpm

import (
	"bufio"
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
	"github.com/ulikunitz/xz/lzma"
)

// ErrFormat reports a malformed or unsupported package.
var ErrFormat = errors.New("rpm: malformed package")

// Tags used here (rpmtag.h).
const (
	TagName              = 1000
	TagVersion           = 1001
	TagRelease           = 1002
	TagArch              = 1022
	TagPayloadFormat     = 1124
	TagPayloadCompressor = 1125

	// SigTagSHA256 is the signature header's hex SHA-256 of the main header.
	SigTagSHA256 = 273
)

// Tag data types.
const (
	TypeNull        = 0
	TypeChar        = 1
	TypeInt8        = 2
	TypeInt16       = 3
	TypeInt32       = 4
	TypeInt64       = 5
	TypeString      = 6
	TypeBin         = 7
	TypeStringArray = 8
	TypeI18NString  = 9
)

// Limits on header sizes (rpm itself allows 16M entries and 256 MiB of
// data; a kernel package's header is a few MiB).
const (
	MaxEntries  = 1 << 16
	MaxDataSize = 64 << 20
)

const leadSize = 96

var (
	leadMagic   = []byte{0xed, 0xab, 0xee, 0xdb}
	headerMagic = []byte{0x8e, 0xad, 0xe8, 0x01}
)

type entry struct {
	typ    uint32
	offset uint32
	count  uint32
}

// Header is a parsed RPM header: tags and their data.
type Header struct {
	entries map[uint32]entry
	data    []byte
	// Size is the header's length in the file, padding excluded.
	Size int
}

// ReadHeader parses one header structure from r. With pad set it also
// consumes the padding to an 8-byte boundary that follows the signature
// header.
func ReadHeader(r io.Reader, pad bool) (*Header, error) {
	var intro [16]byte
	if _, err := io.ReadFull(r, intro[:]); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrFormat, err)
	}
	if !bytes.Equal(intro[:4], headerMagic) {
		return nil, fmt.Errorf("%w: bad header magic %x", ErrFormat, intro[:4])
	}
	nindex := binary.BigEndian.Uint32(intro[8:])
	hsize := binary.BigEndian.Uint32(intro[12:])
	if nindex > MaxEntries {
		return nil, fmt.Errorf("%w: %d header entries (at most %d)", ErrFormat, nindex, MaxEntries)
	}
	if hsize > MaxDataSize {
		return nil, fmt.Errorf("%w: %d bytes of header data (at most %d)", ErrFormat, hsize, MaxDataSize)
	}
	index := make([]byte, 16*int(nindex))
	if _, err := io.ReadFull(r, index); err != nil {
		return nil, fmt.Errorf("%w: header index: %v", ErrFormat, err)
	}
	data := make([]byte, hsize)
	if _, err := io.ReadFull(r, data); err != nil {
		return nil, fmt.Errorf("%w: header data: %v", ErrFormat, err)
	}
	h := &Header{entries: make(map[uint32]entry, nindex), data: data, Size: 16 + len(index) + len(data)}
	for i := 0; i < int(nindex); i++ {
		b := index[16*i:]
		tag := binary.BigEndian.Uint32(b)
		e := entry{typ: binary.BigEndian.Uint32(b[4:]), offset: binary.BigEndian.Uint32(b[8:]), count: binary.BigEndian.Uint32(b[12:])}
		if err := h.check(tag, e); err != nil {
			return nil, err
		}
		h.entries[tag] = e
	}
	if pad {
		if p := (8 - h.Size%8) % 8; p > 0 {
			if _, err := io.CopyN(io.Discard, r, int64(p)); err != nil {
				return nil, fmt.Errorf("%w: header padding: %v", ErrFormat, err)
			}
		}
	}
	return h, nil
}

// check validates that an entry's data lies inside the data store.
func (h *Header) check(tag uint32, e entry) error {
	bad := func(why string) error {
		return fmt.Errorf("%w: tag %d: %s", ErrFormat, tag, why)
	}
	if uint64(e.offset) > uint64(len(h.data)) {
		return bad("offset outside the data")
	}
	rest := h.data[e.offset:]
	var width uint64
	switch e.typ {
	case TypeNull:
		return nil
	case TypeChar, TypeInt8, TypeBin:
		width = 1
	case TypeInt16:
		width = 2
	case TypeInt32:
		width = 4
	case TypeInt64:
		width = 8
	case TypeString:
		if e.count != 1 {
			return bad("string with a count other than 1")
		}
		fallthrough
	case TypeStringArray, TypeI18NString:
		if e.count == 0 || uint64(e.count) > uint64(len(rest)) {
			return bad("string count out of range")
		}
		for i := uint32(0); i < e.count; i++ {
			n := bytes.IndexByte(rest, 0)
			if n < 0 {
				return bad("unterminated string")
			}
			rest = rest[n+1:]
		}
		return nil
	default:
		return bad(fmt.Sprintf("unknown type %d", e.typ))
	}
	if uint64(e.count)*width > uint64(len(rest)) {
		return bad("data runs past the end")
	}
	return nil
}

// String returns a string (or the first string of an array) tag.
func (h *Header) String(tag uint32) (string, bool) {
	e, ok := h.entries[tag]
	if !ok || (e.typ != TypeString && e.typ != TypeStringArray && e.typ != TypeI18NString) {
		return "", false
	}
	rest := h.data[e.offset:]
	return string(rest[:bytes.IndexByte(rest, 0)]), true
}

// Has reports whether the header carries tag.
func (h *Header) Has(tag uint32) bool {
	_, ok := h.entries[tag]
	return ok
}

// Package is an opened RPM positioned at its payload.
type Package struct {
	Name, Version, Release, Arch string
	// PayloadFormat is "cpio"; PayloadCompressor one of gzip, bzip2,
	// xz, lzma, zstd (gzip when the tag is absent, as in rpm).
	PayloadFormat, PayloadCompressor string
	Signature, Header                *Header
	r                                io.Reader
}

// Open reads the lead and both headers; the payload follows. When the
// signature header carries the main header's SHA-256 it is checked (GPG
// signatures are not: trust in the package file comes from where it was
// fetched, and the build manifest records its digest).
func Open(r io.Reader) (*Package, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	var lead [leadSize]byte
	if _, err := io.ReadFull(br, lead[:]); err != nil {
		return nil, fmt.Errorf("%w: lead: %v", ErrFormat, err)
	}
	if !bytes.Equal(lead[:4], leadMagic) {
		return nil, fmt.Errorf("%w: not an RPM (magic %x)", ErrFormat, lead[:4])
	}
	if major := lead[4]; major != 3 && major != 4 {
		return nil, fmt.Errorf("%w: format version %d unsupported", ErrFormat, major)
	}
	if st := binary.BigEndian.Uint16(lead[78:]); st != 5 {
		return nil, fmt.Errorf("%w: signature type %d unsupported (want header-style, 5)", ErrFormat, st)
	}
	sig, err := ReadHeader(br, true)
	if err != nil {
		return nil, fmt.Errorf("signature header: %w", err)
	}
	var raw bytes.Buffer
	hdr, err := ReadHeader(io.TeeReader(br, &raw), false)
	if err != nil {
		return nil, fmt.Errorf("main header: %w", err)
	}
	if want, ok := sig.String(SigTagSHA256); ok {
		got := sha256.Sum256(raw.Bytes())
		if hex.EncodeToString(got[:]) != want {
			return nil, fmt.Errorf("%w: main header SHA-256 %x does not match the signature header's %s", ErrFormat, got, want)
		}
	}
	p := &Package{Signature: sig, Header: hdr, r: br, PayloadFormat: "cpio", PayloadCompressor: "gzip"}
	p.Name, _ = hdr.String(TagName)
	p.Version, _ = hdr.String(TagVersion)
	p.Release, _ = hdr.String(TagRelease)
	p.Arch, _ = hdr.String(TagArch)
	if v, ok := hdr.String(TagPayloadFormat); ok {
		p.PayloadFormat = v
	}
	if v, ok := hdr.String(TagPayloadCompressor); ok {
		p.PayloadCompressor = v
	}
	return p, nil
}

// Payload returns the decompressed cpio archive.
func (p *Package) Payload() (io.ReadCloser, error) {
	if p.PayloadFormat != "cpio" {
		return nil, fmt.Errorf("%w: payload format %q (want cpio)", ErrFormat, p.PayloadFormat)
	}
	switch p.PayloadCompressor {
	case "gzip":
		zr, err := gzip.NewReader(p.r)
		if err != nil {
			return nil, fmt.Errorf("%w: gzip payload: %v", ErrFormat, err)
		}
		return zr, nil
	case "bzip2":
		return io.NopCloser(bzip2.NewReader(p.r)), nil
	case "xz":
		xr, err := xz.NewReader(p.r)
		if err != nil {
			return nil, fmt.Errorf("%w: xz payload: %v", ErrFormat, err)
		}
		return io.NopCloser(xr), nil
	case "lzma":
		lr, err := lzma.NewReader(p.r)
		if err != nil {
			return nil, fmt.Errorf("%w: lzma payload: %v", ErrFormat, err)
		}
		return io.NopCloser(lr), nil
	case "zstd":
		zr, err := zstd.NewReader(p.r, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, fmt.Errorf("%w: zstd payload: %v", ErrFormat, err)
		}
		return zr.IOReadCloser(), nil
	case "identity":
		return io.NopCloser(p.r), nil
	}
	return nil, fmt.Errorf("%w: payload compressor %q unsupported", ErrFormat, p.PayloadCompressor)
}
