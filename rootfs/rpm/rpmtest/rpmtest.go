// Package rpmtest writes small RPM packages for tests: a lead, a signature
// header with the size and SHA-256 header digest, a main header with name,
// version, release, arch and payload tags, and a compressed cpio payload.
package rpmtest

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"sort"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/cocoon-containers/cocoon/rootfs/rpm"
)

// Spec describes the package to write.
type Spec struct {
	Name, Version, Release, Arch string
	// Compressor is gzip, xz, zstd or identity (default gzip).
	Compressor string
	// Payload is the uncompressed cpio archive.
	Payload []byte
}

type tagValue struct {
	tag, typ uint32
	data     []byte
	count    uint32
}

func str(tag uint32, s string) tagValue {
	return tagValue{tag: tag, typ: rpm.TypeString, data: append([]byte(s), 0), count: 1}
}

func int32v(tag uint32, v uint32) tagValue {
	b := make([]byte, 4)
	binary.BigEndian.PutUint32(b, v)
	return tagValue{tag: tag, typ: rpm.TypeInt32, data: b, count: 1}
}

// header encodes tags in rpm's layout: a region tag (62 for the signature
// header, 63 for the main one) covering every entry, the index sorted by
// tag, integer data aligned to its width.
func header(region uint32, tags []tagValue) []byte {
	sort.Slice(tags, func(i, j int) bool { return tags[i].tag < tags[j].tag })
	var index, data bytes.Buffer
	var trailer [16]byte
	binary.BigEndian.PutUint32(trailer[0:], region)
	binary.BigEndian.PutUint32(trailer[4:], rpm.TypeBin)
	binary.BigEndian.PutUint32(trailer[8:], uint32(-int32(16*(len(tags)+1))))
	binary.BigEndian.PutUint32(trailer[12:], 16)
	tags = append([]tagValue{{tag: region, typ: rpm.TypeBin, data: trailer[:], count: 16}}, tags...)
	// The region's trailer is the last thing in the data store.
	order := append(append([]tagValue(nil), tags[1:]...), tags[0])
	offsets := map[uint32]int{}
	for _, t := range order {
		align := map[uint32]int{rpm.TypeInt16: 2, rpm.TypeInt32: 4, rpm.TypeInt64: 8}[t.typ]
		for align > 0 && data.Len()%align != 0 {
			data.WriteByte(0)
		}
		offsets[t.tag] = data.Len()
		data.Write(t.data)
	}
	for _, t := range tags {
		var e [16]byte
		binary.BigEndian.PutUint32(e[0:], t.tag)
		binary.BigEndian.PutUint32(e[4:], t.typ)
		binary.BigEndian.PutUint32(e[8:], uint32(offsets[t.tag]))
		binary.BigEndian.PutUint32(e[12:], t.count)
		index.Write(e[:])
	}
	var out bytes.Buffer
	out.Write([]byte{0x8e, 0xad, 0xe8, 0x01, 0, 0, 0, 0})
	binary.Write(&out, binary.BigEndian, uint32(len(tags)))
	binary.Write(&out, binary.BigEndian, uint32(data.Len()))
	out.Write(index.Bytes())
	out.Write(data.Bytes())
	return out.Bytes()
}

func compress(kind string, b []byte) ([]byte, error) {
	var out bytes.Buffer
	var w io.WriteCloser
	var err error
	switch kind {
	case "", "gzip":
		w = gzip.NewWriter(&out)
	case "xz":
		w, err = xz.NewWriter(&out)
	case "zstd":
		w, err = zstd.NewWriter(&out)
	case "identity":
		return b, nil
	default:
		return nil, fmt.Errorf("rpmtest: compressor %q", kind)
	}
	if err != nil {
		return nil, err
	}
	if _, err := w.Write(b); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// Write writes the package described by s.
func Write(w io.Writer, s Spec) error {
	comp := s.Compressor
	if comp == "" {
		comp = "gzip"
	}
	payload, err := compress(comp, s.Payload)
	if err != nil {
		return err
	}
	arch := s.Arch
	if arch == "" {
		arch = "x86_64"
	}
	main := header(63, []tagValue{
		str(rpm.TagName, s.Name), str(rpm.TagVersion, s.Version), str(rpm.TagRelease, s.Release),
		str(rpm.TagArch, arch), str(1021, "linux"), str(rpm.TagPayloadFormat, "cpio"),
		str(rpm.TagPayloadCompressor, comp), str(1126, "9"),
		int32v(1046, uint32(len(s.Payload))), // RPMTAG_ARCHIVESIZE, which rpm2cpio checks
	})
	sum := sha256.Sum256(main)
	sig := header(62, []tagValue{
		int32v(1000, uint32(len(main)+len(payload))), // RPMSIGTAG_SIZE
		str(273, hex.EncodeToString(sum[:])),         // RPMSIGTAG_SHA256
	})
	lead := make([]byte, 96)
	copy(lead, []byte{0xed, 0xab, 0xee, 0xdb, 3, 0})
	binary.BigEndian.PutUint16(lead[8:], 1) // archnum
	copy(lead[10:76], fmt.Sprintf("%s-%s-%s", s.Name, s.Version, s.Release))
	binary.BigEndian.PutUint16(lead[76:], 1) // osnum
	binary.BigEndian.PutUint16(lead[78:], 5) // header-style signature
	for _, b := range [][]byte{lead, sig, make([]byte, (8-len(sig)%8)%8), main, payload} {
		if _, err := w.Write(b); err != nil {
			return err
		}
	}
	return nil
}
