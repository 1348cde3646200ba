package rootfs

import (
	"bytes"
	"context"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

func TestBuildLayerImage(t *testing.T) {
	src := t.TempDir()
	if err := os.MkdirAll(filepath.Join(src, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "etc", "motd"), bytes.Repeat([]byte("layer "), 5000), 0o644); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "layer.img")
	l, err := BuildLayerImage(context.Background(), src, img)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.RootHash) != 32 || l.DataBlocks == 0 || l.FSType != "erofs" {
		t.Fatalf("layer %+v", l)
	}
	root := hex.EncodeToString(l.RootHash)
	verify := func(p string) error {
		return exec.Command("veritysetup", "verify", p, p, root, "--hash-offset="+strconv.FormatInt(l.HashOffset(), 10)).Run()
	}
	if err := verify(img); err != nil {
		t.Fatalf("veritysetup verify of our appended tree: %v", err)
	}

	again, err := BuildLayerImage(context.Background(), src, filepath.Join(dir, "again.img"))
	if err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(img)
	b, _ := os.ReadFile(again.Path)
	if !bytes.Equal(a, b) {
		t.Error("two builds of the same tree differ")
	}

	i := bytes.Index(a, []byte("layer layer"))
	if i < 0 {
		t.Fatal("file data not found in the image")
	}
	a[i] ^= 0xff
	tampered := filepath.Join(dir, "tampered.img")
	if err := os.WriteFile(tampered, a, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := verify(tampered); err == nil {
		t.Error("veritysetup verify accepted a flipped data byte")
	}
	if _, err := BuildLayerImage(context.Background(), filepath.Join(dir, "missing"), filepath.Join(dir, "x.img")); err == nil {
		t.Error("a missing source built")
	}
}
