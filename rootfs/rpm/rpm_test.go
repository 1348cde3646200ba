package rpm_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os/exec"
	"testing"

	"github.com/cocoon-containers/cocoon/rootfs/cpio"
	"github.com/cocoon-containers/cocoon/rootfs/rpm"
	"github.com/cocoon-containers/cocoon/rootfs/rpm/rpmtest"
)

func payload(t testing.TB) []byte {
	t.Helper()
	a := cpio.New()
	if err := a.AddFile("./boot/vmlinuz-6.6.1-azl", 0o644, bytes.Repeat([]byte("vmlinuz"), 3000)); err != nil {
		t.Fatal(err)
	}
	if err := a.AddFile("./lib/modules/6.6.1-azl/kernel/fs/erofs/erofs.ko", 0o644, []byte("\x7fELF module")); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if _, err := a.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func writeRPM(t testing.TB, comp string) []byte {
	t.Helper()
	var b bytes.Buffer
	err := rpmtest.Write(&b, rpmtest.Spec{Name: "kernel-uvm", Version: "6.6.1", Release: "1.azl3", Compressor: comp, Payload: payload(t)})
	if err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestOpenAndPayload(t *testing.T) {
	want := payload(t)
	for _, comp := range []string{"gzip", "xz", "zstd", "identity"} {
		t.Run(comp, func(t *testing.T) {
			pkg := writeRPM(t, comp)
			p, err := rpm.Open(bytes.NewReader(pkg))
			if err != nil {
				t.Fatal(err)
			}
			if p.Name != "kernel-uvm" || p.Version != "6.6.1" || p.Release != "1.azl3" || p.Arch != "x86_64" || p.PayloadCompressor != comp {
				t.Fatalf("package = %s %s %s %s %s", p.Name, p.Version, p.Release, p.Arch, p.PayloadCompressor)
			}
			pr, err := p.Payload()
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(pr)
			pr.Close()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("payload differs from the archive written (%d vs %d bytes)", len(got), len(want))
			}
			if comp == "identity" {
				return
			}
			// rpm's own reader agrees on the same file.
			cmd := exec.Command("rpm2cpio", "-")
			cmd.Stdin = bytes.NewReader(pkg)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			theirs, err := cmd.Output()
			if err != nil {
				t.Fatalf("rpm2cpio: %v: %s", err, stderr.String())
			}
			if !bytes.Equal(theirs, got) {
				t.Fatalf("rpm2cpio payload (%d bytes) differs from ours (%d bytes)", len(theirs), len(got))
			}
		})
	}
}

func TestOpenRejects(t *testing.T) {
	good := writeRPM(t, "gzip")
	mutate := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	sigEnd := 96 + 16 + 16*3 // lead, sig intro, three sig entries: first sig data byte
	mainStart := func(b []byte) int { return bytes.Index(b[96+8:], []byte{0x8e, 0xad, 0xe8, 0x01}) + 96 + 8 }
	tests := map[string][]byte{
		"empty":     nil,
		"not rpm":   mutate(func(b []byte) []byte { b[0] = 0; return b }),
		"version 2": mutate(func(b []byte) []byte { b[4] = 2; return b }),
		"sig type":  mutate(func(b []byte) []byte { b[79] = 1; return b }),
		"tampered header": mutate(func(b []byte) []byte {
			i := bytes.LastIndex(b, []byte("kernel-uvm\x00"))
			b[i] = 'K'
			return b
		}),
		"too many entries": mutate(func(b []byte) []byte {
			binary.BigEndian.PutUint32(b[96+8:], rpm.MaxEntries+1)
			return b
		}),
		"offset out of range": mutate(func(b []byte) []byte {
			binary.BigEndian.PutUint32(b[96+16+16+8:], 1<<20)
			return b
		}),
		"truncated header": good[:sigEnd],
		"bad main magic": mutate(func(b []byte) []byte {
			b[mainStart(b)] = 0
			return b
		}),
	}
	for name, b := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := rpm.Open(bytes.NewReader(b)); !errors.Is(err, rpm.ErrFormat) {
				t.Fatalf("Open = %v, want ErrFormat", err)
			}
		})
	}
}

func TestPayloadRejectsUnknownFormats(t *testing.T) {
	for _, p := range []*rpm.Package{
		{PayloadFormat: "drpm", PayloadCompressor: "gzip"},
		{PayloadFormat: "cpio", PayloadCompressor: "lz4"},
	} {
		if _, err := p.Payload(); !errors.Is(err, rpm.ErrFormat) {
			t.Errorf("Payload(%s/%s) = %v, want ErrFormat", p.PayloadFormat, p.PayloadCompressor, err)
		}
	}
}

func FuzzReadHeader(f *testing.F) {
	pkg := writeRPM(f, "identity")
	f.Add(pkg[96:])
	f.Add(pkg[96 : 96+16])
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := rpm.ReadHeader(bytes.NewReader(b), true)
		if err != nil {
			if !errors.Is(err, rpm.ErrFormat) {
				t.Fatalf("error without ErrFormat: %v", err)
			}
			return
		}
		if h.Size > len(b) {
			t.Fatalf("header size %d from %d bytes", h.Size, len(b))
		}
		for _, tag := range []uint32{rpm.TagName, rpm.TagVersion, rpm.TagPayloadCompressor, 62, 63, 1000, 273} {
			h.String(tag)
		}
	})
}

func FuzzOpen(f *testing.F) {
	f.Add(writeRPM(f, "identity"))
	f.Add(writeRPM(f, "gzip"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := rpm.Open(bytes.NewReader(b))
		if err != nil {
			return
		}
		pr, err := p.Payload()
		if err != nil {
			return
		}
		defer pr.Close()
		cr := cpio.NewReader(io.LimitReader(pr, 1<<20))
		for i := 0; i < 100; i++ {
			if _, err := cr.Next(); err != nil {
				return
			}
		}
	})
}
