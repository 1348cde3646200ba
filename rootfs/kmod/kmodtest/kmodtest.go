// Package kmodtest makes stand-in kernel modules for tests: minimal ELF64
// relocatable objects whose only content is a .modinfo section, which is
// all the module resolver reads.
package kmodtest

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// Module returns an ELF object named name that depends on deps.
func Module(name string, deps ...string) []byte {
	info := []byte("license=GPL\x00depends=" + strings.Join(deps, ",") + "\x00name=" + name + "\x00vermagic=6.6.0 SMP mod_unload\x00")
	shstr := []byte("\x00.modinfo\x00.shstrtab\x00")
	const ehsize, shentsize = 64, 64
	infoOff := ehsize
	strOff := infoOff + len(info)
	shOff := (strOff + len(shstr) + 7) &^ 7
	var b bytes.Buffer
	le := binary.LittleEndian
	// ELF header: 64-bit, little endian, current version, relocatable, x86-64.
	b.Write([]byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0})
	b.Write(make([]byte, 8))
	binary.Write(&b, le, uint16(1))  // ET_REL
	binary.Write(&b, le, uint16(62)) // EM_X86_64
	binary.Write(&b, le, uint32(1))  // EV_CURRENT
	binary.Write(&b, le, uint64(0))  // entry
	binary.Write(&b, le, uint64(0))  // phoff
	binary.Write(&b, le, uint64(shOff))
	binary.Write(&b, le, uint32(0)) // flags
	binary.Write(&b, le, uint16(ehsize))
	binary.Write(&b, le, uint16(0)) // phentsize
	binary.Write(&b, le, uint16(0)) // phnum
	binary.Write(&b, le, uint16(shentsize))
	binary.Write(&b, le, uint16(3)) // shnum
	binary.Write(&b, le, uint16(2)) // shstrndx
	b.Write(info)
	b.Write(shstr)
	b.Write(make([]byte, shOff-b.Len()))
	section := func(name, typ uint32, off, size int) {
		binary.Write(&b, le, name)
		binary.Write(&b, le, typ)
		binary.Write(&b, le, uint64(0)) // flags
		binary.Write(&b, le, uint64(0)) // addr
		binary.Write(&b, le, uint64(off))
		binary.Write(&b, le, uint64(size))
		binary.Write(&b, le, uint32(0)) // link
		binary.Write(&b, le, uint32(0)) // info
		binary.Write(&b, le, uint64(1)) // addralign
		binary.Write(&b, le, uint64(0)) // entsize
	}
	section(0, 0, 0, 0)
	section(1, 1, infoOff, len(info))  // .modinfo, PROGBITS
	section(10, 3, strOff, len(shstr)) // .shstrtab, STRTAB
	return b.Bytes()
}

// Compress compresses a module the way a .ko.xz, .ko.zst or .ko.gz file
// holds it; any other suffix returns b unchanged.
func Compress(suffix string, b []byte) []byte {
	var out bytes.Buffer
	switch suffix {
	case ".ko.xz":
		w, _ := xz.NewWriter(&out)
		w.Write(b)
		w.Close()
	case ".ko.zst":
		w, _ := zstd.NewWriter(&out)
		w.Write(b)
		w.Close()
	case ".ko.gz":
		w := gzip.NewWriter(&out)
		w.Write(b)
		w.Close()
	default:
		return b
	}
	return out.Bytes()
}
