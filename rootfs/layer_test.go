package rootfs

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"

	"github.com/cocoon-containers/cocoon/image/imagetest"
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

// TestLayerImagesFromLayout: every layer of an OCI layout becomes its own
// verity image, bottom first, in overlayfs form (the whiteout is a 0:0
// device, ownership kept), with the same root hashes every time.
func TestLayerImagesFromLayout(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	img := imagetest.Image(t,
		imagetest.Layer(t, imagetest.Entry{Name: "etc/", Type: tar.TypeDir}, imagetest.Entry{Name: "etc/gone", Body: "x"},
			imagetest.Entry{Name: "home/", Type: tar.TypeDir}, imagetest.Entry{Name: "home/user-file", Body: "mine", Uid: 1000, Gid: 1000}),
		imagetest.Layer(t, imagetest.Entry{Name: "etc/.wh.gone"}, imagetest.Entry{Name: "etc/new", Body: "new"}),
	)
	dir := t.TempDir()
	p, err := layout.Write(filepath.Join(dir, "oci"), empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "app:1"})); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ls, err := LayerImagesFromLayout(ctx, filepath.Join(dir, "oci"), "app:1", filepath.Join(dir, "out1"))
	if err != nil {
		t.Fatal(err)
	}
	again, err := LayerImagesFromLayout(ctx, filepath.Join(dir, "oci"), "", filepath.Join(dir, "out2"))
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != 2 || len(again) != 2 {
		t.Fatalf("%d and %d layers, want 2", len(ls), len(again))
	}
	diffs, _ := img.ConfigFile()
	for i, l := range ls {
		if l.DiffID != diffs.RootFS.DiffIDs[i].String() {
			t.Errorf("layer %d diff_id %s, want %s", i, l.DiffID, diffs.RootFS.DiffIDs[i])
		}
		if !bytes.Equal(l.RootHash, again[i].RootHash) {
			t.Errorf("layer %d: root hash differs between builds", i)
		}
		root := hex.EncodeToString(l.RootHash)
		if out, err := exec.Command("veritysetup", "verify", l.Path, l.Path, root, "--hash-offset="+strconv.FormatInt(l.HashOffset(), 10)).CombinedOutput(); err != nil {
			t.Errorf("layer %d: veritysetup verify: %v %s", i, err, out)
		}
	}
	if bytes.Equal(ls[0].RootHash, ls[1].RootHash) {
		t.Error("two different layers, one root hash")
	}
	x := filepath.Join(dir, "x")
	if out, err := exec.Command("fsck.erofs", "--extract="+x, ls[1].Path).CombinedOutput(); err != nil {
		t.Fatalf("fsck.erofs: %v %s", err, out)
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(filepath.Join(x, "etc", "gone"), &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFCHR || st.Rdev != 0 {
		t.Errorf("top layer's etc/gone: %v mode %o rdev %d; want the overlay whiteout", err, st.Mode, st.Rdev)
	}
	x0 := filepath.Join(dir, "x0")
	if out, err := exec.Command("fsck.erofs", "--extract="+x0, ls[0].Path).CombinedOutput(); err != nil {
		t.Fatalf("fsck.erofs: %v %s", err, out)
	}
	if err := syscall.Lstat(filepath.Join(x0, "home", "user-file"), &st); err != nil || st.Uid != 1000 || st.Gid != 1000 {
		t.Errorf("ownership not kept: %v uid %d gid %d", err, st.Uid, st.Gid)
	}

	if _, err := LayerImagesFromLayout(ctx, filepath.Join(dir, "oci"), "other:1", filepath.Join(dir, "out3")); err == nil {
		t.Error("a ref the layout does not hold was accepted")
	}
}
