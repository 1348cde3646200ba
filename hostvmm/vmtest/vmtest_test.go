package vmtest

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"testing"
)

func TestPadInitrd(t *testing.T) {
	p := filepath.Join(t.TempDir(), "initrd")
	var first bytes.Buffer
	zw := gzip.NewWriter(&first)
	zw.Write([]byte("070701 first archive"))
	zw.Close()
	if err := os.WriteFile(p, first.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	const size = 200000
	if err := PadInitrd(p, size); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if got := len(b); got != size {
		t.Fatalf("padded size = %d, want %d", got, size)
	}
	if !bytes.HasPrefix(b, first.Bytes()) {
		t.Fatal("the original archive was changed")
	}
	zr, err := gzip.NewReader(bytes.NewReader(b[first.Len():]))
	if err != nil {
		t.Fatalf("appended member: %v", err)
	}
	zr.Multistream(false)
	filler, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(filler, []byte("070701")) || !bytes.Contains(filler, []byte("filler\x00")) || !bytes.Contains(filler, []byte("TRAILER!!!")) {
		t.Fatalf("appended member is not a newc archive with the filler: %.120q", filler)
	}
	if err := PadInitrd(p, size-1); err == nil {
		t.Fatal("shrinking pad succeeded, want an error")
	}
}
