package devmapper

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"strings"
	"testing"
)

func TestIoctlNumbers(t *testing.T) {
	// DM_DEV_CREATE and DM_TABLE_LOAD as the kernel headers define them.
	if got, want := ioctlNumber(cmdDevCreate), uintptr(0xc138fd03); got != want {
		t.Errorf("DM_DEV_CREATE = %#x, want %#x", got, want)
	}
	if got, want := ioctlNumber(cmdTableLoad), uintptr(0xc138fd09); got != want {
		t.Errorf("DM_TABLE_LOAD = %#x, want %#x", got, want)
	}
}

func TestTableLoadBuffer(t *testing.T) {
	targets := []Target{
		{Start: 0, Length: 8, Type: "linear", Params: "/dev/vda 0"},
		{Start: 8, Length: 16, Type: "verity", Params: "1 /dev/vda /dev/vdb 4096 4096 3 1 sha256 aa -"},
	}
	b, err := tableLoadBuffer("layer-1", true, targets)
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	if v := [3]uint32{le.Uint32(b[0:]), le.Uint32(b[4:]), le.Uint32(b[8:])}; v != ioctlVersion {
		t.Errorf("version %v", v)
	}
	if got := le.Uint32(b[12:]); int(got) != len(b) {
		t.Errorf("data_size %d, buffer %d", got, len(b))
	}
	if got := le.Uint32(b[16:]); got != ioctlHeaderSize {
		t.Errorf("data_start %d", got)
	}
	if got := le.Uint32(b[20:]); got != 2 {
		t.Errorf("target_count %d", got)
	}
	if got := le.Uint32(b[28:]); got != flagReadOnly|flagSecureData {
		t.Errorf("flags %#x", got)
	}
	if name := string(bytes.TrimRight(b[48:48+nameLen], "\x00")); name != "layer-1" {
		t.Errorf("name %q", name)
	}
	off := ioctlHeaderSize
	for i, tg := range targets {
		spec := b[off:]
		if le.Uint64(spec[0:]) != tg.Start || le.Uint64(spec[8:]) != tg.Length {
			t.Errorf("target %d: start/length %d/%d", i, le.Uint64(spec[0:]), le.Uint64(spec[8:]))
		}
		if typ := string(bytes.TrimRight(spec[24:40], "\x00")); typ != tg.Type {
			t.Errorf("target %d: type %q", i, typ)
		}
		params := spec[targetSpecSize:]
		if got := string(params[:bytes.IndexByte(params, 0)]); got != tg.Params {
			t.Errorf("target %d: params %q", i, got)
		}
		next := int(le.Uint32(spec[20:]))
		if i == len(targets)-1 {
			if next != 0 {
				t.Errorf("last target: next %d, want 0", next)
			}
			if rest := len(b) - off; rest%8 != 0 || rest < targetSpecSize+len(tg.Params)+1 {
				t.Errorf("last target: %d bytes", rest)
			}
			break
		}
		if next%8 != 0 || next < targetSpecSize+len(tg.Params)+1 {
			t.Errorf("target %d: next %d not 8-aligned past its parameters", i, next)
		}
		off += next
	}
}

func TestRejects(t *testing.T) {
	for _, name := range []string{"", "a/b", "../x", "control", "with space", strings.Repeat("n", 128)} {
		if _, err := tableLoadBuffer(name, true, []Target{{Length: 8, Type: "zero"}}); err == nil {
			t.Errorf("name %q accepted", name)
		}
	}
	for _, tg := range []Target{{Length: 8}, {Length: 8, Type: strings.Repeat("t", 16)}, {Length: 8, Type: "zero", Params: "a\x00b"}} {
		if _, err := tableLoadBuffer("ok", true, []Target{tg}); err == nil {
			t.Errorf("target %+v accepted", tg)
		}
	}
	if _, err := tableLoadBuffer("ok", true, nil); err == nil {
		t.Error("empty table accepted")
	}
}

func TestVerityTarget(t *testing.T) {
	root := bytes.Repeat([]byte{0xab}, 32)
	salt, _ := hex.DecodeString("0011")
	tg, err := Verity{DataDevice: "/dev/vda", HashDevice: "/dev/vdb", DataBlocks: 100, RootHash: root, Salt: salt}.Target()
	if err != nil {
		t.Fatal(err)
	}
	// The same line the rootfs builder writes into dm-mod.create.
	want := "1 /dev/vda /dev/vdb 4096 4096 100 1 sha256 " + hex.EncodeToString(root) + " 0011"
	if tg.Params != want || tg.Length != 800 || tg.Type != "verity" {
		t.Errorf("got %+v, want params %q length 800", tg, want)
	}
	tg, _ = Verity{DataDevice: "/dev/vda", HashDevice: "/dev/vdb", DataBlocks: 1, RootHash: root}.Target()
	if !strings.HasSuffix(tg.Params, " -") {
		t.Errorf("empty salt: %q, want '-'", tg.Params)
	}
	tg, err = Verity{DataDevice: "/dev/vdc", HashDevice: "/dev/vdc", DataBlocks: 10, HashStartBlock: 11, RootHash: root}.Target()
	if err != nil || !strings.HasPrefix(tg.Params, "1 /dev/vdc /dev/vdc 4096 4096 10 11 sha256 ") {
		t.Errorf("appended tree: %+v, %v", tg, err)
	}
	bad := []Verity{
		{DataDevice: "/dev/vdc", HashDevice: "/dev/vdc", DataBlocks: 10, HashStartBlock: 10, RootHash: root},
		{DataDevice: "/dev/vdc", HashDevice: "/dev/vdc", DataBlocks: 10, RootHash: root},
		{DataDevice: "vda", HashDevice: "/dev/vdb", DataBlocks: 1, RootHash: root},
		{DataDevice: "/dev/vda x", HashDevice: "/dev/vdb", DataBlocks: 1, RootHash: root},
		{DataDevice: "/dev/vda", HashDevice: "/dev/vdb", DataBlocks: 0, RootHash: root},
		{DataDevice: "/dev/vda", HashDevice: "/dev/vdb", DataBlocks: 1, RootHash: root[:20]},
	}
	for _, v := range bad {
		if _, err := v.Target(); err == nil {
			t.Errorf("%+v accepted", v)
		}
	}
}
