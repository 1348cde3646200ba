package sandbox_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"github.com/containerd/containerd/mount"

	"github.com/cocoon-containers/cocoon/shim/config"
	"github.com/cocoon-containers/cocoon/shim/sandbox"
	"github.com/cocoon-containers/cocoon/shim/shimtest"
)

// TestLayerCache: a sandbox that shares nothing packs each committed
// snapshot layer once; the next pod attaches the same images, and an entry
// whose snapshot containerd removed is dropped.
func TestLayerCache(t *testing.T) {
	if _, err := os.Stat("/usr/bin/mkfs.erofs"); err != nil {
		t.Skip("needs mkfs.erofs (erofs-utils)")
	}
	state := t.TempDir()
	cfg, err := config.Parse([]byte("[sandbox]\nlauncher = \"qemu\"\nshared_fs = \"none\"\nstate_dir = \"" + state + "\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	snaps := t.TempDir()
	l1, l2 := filepath.Join(snaps, "1", "fs"), filepath.Join(snaps, "2", "fs")
	for i, d := range []string{l1, l2} {
		if err := os.MkdirAll(filepath.Join(d, "etc"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "etc", "layer"), []byte{byte('1' + i)}, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	overlay := func(lowerdir string) []mount.Mount {
		return []mount.Mount{{Type: "overlay", Source: "overlay", Options: []string{"index=off", "lowerdir=" + lowerdir}}}
	}
	ctx := context.Background()
	l := &shimtest.Launcher{}
	start := func(id string, ms []mount.Mount) []string {
		t.Helper()
		sb, err := sandbox.Start(ctx, sandbox.Options{ID: id, Config: cfg, Launcher: l, Hostname: id,
			ContainerID: id, Rootfs: t.TempDir(), RootfsMounts: ms})
		if err != nil {
			t.Fatal(err)
		}
		var paths []string
		for _, d := range l.Spec(id).Disks {
			paths = append(paths, d.Path)
		}
		if err := sb.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		return paths
	}
	inode := func(p string) uint64 {
		var st syscall.Stat_t
		if err := syscall.Stat(p, &st); err != nil {
			t.Fatalf("%s after the pod stopped: %v", p, err)
		}
		return st.Ino
	}
	first := start("pod1", overlay(l2+":"+l1))
	if len(first) != 2 {
		t.Fatalf("disks %v, want one per layer", first)
	}
	ino := []uint64{inode(first[0]), inode(first[1])}
	second := start("pod2", overlay(l2+":"+l1))
	if !slices.Equal(first, second) || inode(second[0]) != ino[0] || inode(second[1]) != ino[1] {
		t.Fatalf("second pod's disks %v, want the first pod's %v, not rebuilt", second, first)
	}
	// containerd removed the top layer's snapshot.
	if err := os.RemoveAll(filepath.Dir(l2)); err != nil {
		t.Fatal(err)
	}
	third := start("pod3", overlay(l1))
	if len(third) != 1 || third[0] != first[0] {
		t.Fatalf("third pod's disks %v, want the bottom layer's cached image %s", third, first[0])
	}
	if _, err := os.Stat(first[1]); !os.IsNotExist(err) {
		t.Errorf("the removed snapshot's image is still cached: %v", err)
	}
	imgs, _ := filepath.Glob(filepath.Join(state, sandbox.LayerCacheDir, "*.img"))
	if len(imgs) != 1 {
		t.Errorf("cache holds %v", imgs)
	}
}
