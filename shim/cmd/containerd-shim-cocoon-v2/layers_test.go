package main

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/hex"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"

	"github.com/cocoon-containers/cocoon/image/imagetest"
	"github.com/cocoon-containers/cocoon/rootfs"
)

// TestLayerHashesMatchContainerd: for an image whose layers hold what
// real images hold (owners, set-id and sticky bits, hard links, symlinks,
// a device node, xattrs, whiteouts, an opaque directory, and directories a
// later layer only implies), the root hashes cocoon-rootfs layers predicts
// from the OCI layout are the ones the shim gets by packing the snapshots
// containerd's overlayfs snapshotter unpacked.
func TestLayerHashesMatchContainerd(t *testing.T) {
	c := requireContainerd(t)
	ctx := context.Background()
	const imageName = "docker.io/cocoon/layers:test"
	img := imagetest.Image(t,
		imagetest.Layer(t,
			imagetest.Entry{Name: "etc/", Type: tar.TypeDir},
			imagetest.Entry{Name: "etc/conf", Body: "deleted above\n"},
			imagetest.Entry{Name: "home/", Type: tar.TypeDir},
			imagetest.Entry{Name: "home/u/", Type: tar.TypeDir, Mode: 0o750, Uid: 1000, Gid: 1000, Xattrs: map[string]string{"user.note": "home of u"}},
			imagetest.Entry{Name: "home/u/old", Body: "old", Uid: 1000, Gid: 1000},
			imagetest.Entry{Name: "tmp/", Type: tar.TypeDir, Mode: 0o1777},
			imagetest.Entry{Name: "usr/", Type: tar.TypeDir},
			imagetest.Entry{Name: "usr/bin/", Type: tar.TypeDir},
			imagetest.Entry{Name: "usr/bin/tool", Body: "#!/bin/sh\n", Mode: 0o755},
			imagetest.Entry{Name: "usr/bin/suid", Body: "x", Mode: 0o4755},
			imagetest.Entry{Name: "usr/bin/tool-link", Type: tar.TypeLink, Link: "usr/bin/tool"},
			imagetest.Entry{Name: "usr/bin/t", Type: tar.TypeSymlink, Link: "tool"},
			imagetest.Entry{Name: "dev/", Type: tar.TypeDir},
			imagetest.Entry{Name: "dev/null", Type: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3},
		),
		imagetest.Layer(t,
			imagetest.Entry{Name: "home/u/new", Body: "new", Uid: 1000, Gid: 1000},
			imagetest.Entry{Name: "etc/.wh.conf"},
			imagetest.Entry{Name: "usr/bin/.wh..wh..opq"},
			imagetest.Entry{Name: "usr/bin/tool2", Body: "2", Mode: 0o700},
			imagetest.Entry{Name: "var/lib/app/state", Body: "s"},
		),
	)
	dir := t.TempDir()
	lay := filepath.Join(dir, "layout")
	p, err := layout.Write(lay, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{
		"io.containerd.image.name": imageName, "org.opencontainers.image.ref.name": "test"})); err != nil {
		t.Fatal(err)
	}
	tarball := filepath.Join(dir, "image.tar")
	if out, err := exec.Command("tar", "-cf", tarball, "-C", lay, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v %s", err, out)
	}
	if _, _, err := c.Ctr(ctx, "images", "import", tarball); err != nil {
		t.Fatalf("import: %v", err)
	}
	defer c.Ctr(ctx, "images", "rm", imageName)
	if _, _, err := c.Ctr(ctx, "containers", "create", imageName, "layers"); err != nil {
		t.Fatalf("create: %v", err)
	}
	defer c.Ctr(ctx, "containers", "delete", "layers")
	out, _, err := c.Ctr(ctx, "snapshots", "mounts", filepath.Join(dir, "target"), "layers")
	if err != nil {
		t.Fatalf("snapshot mounts: %v", err)
	}
	var lower []string
	for _, f := range strings.FieldsFunc(out, func(r rune) bool { return r == ' ' || r == ',' || r == '\n' }) {
		if v, ok := strings.CutPrefix(f, "lowerdir="); ok {
			lower = strings.Split(v, ":")
		}
	}
	if len(lower) != 2 {
		t.Fatalf("snapshot mounts %q: want an overlay with two lower layers", out)
	}
	slices.Reverse(lower)
	predicted, err := rootfs.LayerImagesFromLayout(ctx, lay, imageName, filepath.Join(dir, "predicted"))
	if err != nil {
		t.Fatal(err)
	}
	for i, d := range lower {
		got, err := rootfs.BuildLayerImage(ctx, d, filepath.Join(dir, "shim-"+string(rune('0'+i))+".img"))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.RootHash, predicted[i].RootHash) {
			t.Errorf("layer %d: containerd's snapshot packs to %s, cocoon-rootfs layers predicts %s\n%s", i,
				hex.EncodeToString(got.RootHash), hex.EncodeToString(predicted[i].RootHash), listTree(d))
		}
	}
}

// listTree lists a snapshot's entries for a failure message.
func listTree(dir string) string {
	cmd := exec.Command("find", ".", "-exec", "stat", "-c", "%A %u:%g %t:%T %n", "{}", "+")
	cmd.Dir = dir
	out, _ := cmd.CombinedOutput()
	if len(out) > 4000 {
		out = out[:4000]
	}
	return string(out)
}
