package unpack

import (
	"archive/tar"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

type entry struct {
	name, link, body string
	typ              byte
	mode             int64
	uid, gid         int
	xattrs           map[string]string
}

func mkTar(t *testing.T, es ...entry) *bytes.Reader {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range es {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.gid, Size: int64(len(e.body))}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Typeflag != tar.TypeReg {
			h.Size = 0
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		for k, v := range e.xattrs {
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
			}
			h.PAXRecords["SCHILY.xattr."+k] = v
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return bytes.NewReader(buf.Bytes())
}

func read(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func exists(p string) bool { _, err := os.Lstat(p); return err == nil }

func TestLayersWhiteoutsHardlinksMeta(t *testing.T) {
	root := t.TempDir()
	opts := Options{NoChown: os.Getuid() != 0}
	lower := mkTar(t,
		entry{name: "etc/", typ: tar.TypeDir, mode: 0o755},
		entry{name: "etc/passwd", body: "root:x:0:0"},
		entry{name: "etc/gone", body: "x"},
		entry{name: "opq/", typ: tar.TypeDir, mode: 0o755},
		entry{name: "opq/old1", body: "1"},
		entry{name: "opq/sub/old2", body: "2"},
		entry{name: "bin/tool", body: "#!tool", mode: 0o4755, uid: 12, gid: 34, xattrs: map[string]string{"user.cocoon": "v"}},
		// As tar writes it: a link entry carries its inode's metadata, which
		// is applied again (as containerd does).
		entry{name: "bin/tool-link", typ: tar.TypeLink, link: "bin/tool", mode: 0o4755, uid: 12, gid: 34},
		entry{name: "bin/sh", typ: tar.TypeSymlink, link: "/bin/tool"},
		entry{name: "bin/other", body: "o", mode: 0o600},
		entry{name: "bin/other-link", typ: tar.TypeLink, link: "bin/other", mode: 0o640},
	)
	if err := Layer(root, lower, opts); err != nil {
		t.Fatal(err)
	}
	upper := mkTar(t,
		entry{name: "etc/.wh.gone", body: ""},
		entry{name: "opq/", typ: tar.TypeDir, mode: 0o750},
		entry{name: "opq/.wh..wh..opq"},
		entry{name: "opq/new", body: "n"},
		entry{name: "./etc/passwd", body: "root:x:0:0:upper"},
	)
	if err := Layer(root, upper, opts); err != nil {
		t.Fatal(err)
	}
	if exists(filepath.Join(root, "etc/gone")) {
		t.Error("whiteout did not remove etc/gone")
	}
	if exists(filepath.Join(root, "opq/old1")) || exists(filepath.Join(root, "opq/sub")) {
		t.Error("opaque directory kept lower entries")
	}
	if got := read(t, filepath.Join(root, "opq/new")); got != "n" {
		t.Errorf("opq/new = %q", got)
	}
	if got := read(t, filepath.Join(root, "etc/passwd")); got != "root:x:0:0:upper" {
		t.Errorf("etc/passwd = %q", got)
	}
	a, _ := os.Stat(filepath.Join(root, "bin/tool"))
	b, _ := os.Stat(filepath.Join(root, "bin/tool-link"))
	if !os.SameFile(a, b) {
		t.Error("hardlink is not the same inode")
	}
	if a.Mode()&os.ModeSetuid == 0 || a.Mode().Perm() != 0o755 {
		t.Errorf("bin/tool mode %v", a.Mode())
	}
	if fi, _ := os.Stat(filepath.Join(root, "bin/other")); fi.Mode().Perm() != 0o640 {
		t.Errorf("bin/other mode %v: the link entry's mode applies to the shared inode", fi.Mode())
	}
	if fi, _ := os.Stat(filepath.Join(root, "opq")); fi.Mode().Perm() != 0o750 {
		t.Errorf("opq mode %v", fi.Mode())
	}
	if l, err := os.Readlink(filepath.Join(root, "bin/sh")); err != nil || l != "/bin/tool" {
		t.Errorf("symlink %q %v", l, err)
	}
	if os.Getuid() == 0 {
		st := a.Sys().(*syscall.Stat_t)
		if st.Uid != 12 || st.Gid != 34 {
			t.Errorf("owner %d:%d", st.Uid, st.Gid)
		}
	}
	buf := make([]byte, 16)
	if n, err := syscall.Getxattr(filepath.Join(root, "bin/tool"), "user.cocoon", buf); err == nil && string(buf[:n]) != "v" {
		t.Errorf("xattr %q", buf[:n])
	}
}

func TestTraversalRefused(t *testing.T) {
	outside := t.TempDir()
	cases := map[string][]entry{
		"dotdot":           {{name: "../escape", body: "x"}},
		"nested dotdot":    {{name: "a/../../escape", body: "x"}},
		"symlink parent":   {{name: "evil", typ: tar.TypeSymlink, link: outside}, {name: "evil/escape", body: "x"}},
		"relative symlink": {{name: "evil", typ: tar.TypeSymlink, link: "../../../../../../" + outside}, {name: "evil/escape", body: "x"}},
		"hardlink out":     {{name: "h", typ: tar.TypeLink, link: "../../etc/passwd"}},
		"hardlink via sym": {{name: "evil", typ: tar.TypeSymlink, link: "/etc"}, {name: "h", typ: tar.TypeLink, link: "evil/passwd"}},
		"whiteout via sym": {{name: "evil", typ: tar.TypeSymlink, link: outside}, {name: "evil/.wh.keep"}},
		"device":           {{name: "dev/sda", typ: tar.TypeBlock}},
		"inner symlink":    {{name: "d/", typ: tar.TypeDir}, {name: "l", typ: tar.TypeSymlink, link: "d"}, {name: "l/escape/x", body: "x"}},
	}
	if err := os.WriteFile(filepath.Join(outside, "keep"), []byte("k"), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, es := range cases {
		t.Run(name, func(t *testing.T) {
			root := filepath.Join(t.TempDir(), "r")
			if err := os.Mkdir(root, 0o755); err != nil {
				t.Fatal(err)
			}
			err := Layer(root, mkTar(t, es...), Options{NoChown: true})
			if err == nil {
				t.Fatal("layer accepted")
			}
			var ee *EntryError
			if !errors.As(err, &ee) {
				t.Fatalf("error without the entry: %v", err)
			}
			if name != "device" && !errors.Is(err, ErrUnsafePath) && !strings.Contains(err.Error(), "not exist") {
				t.Errorf("unexpected error: %v", err)
			}
			if exists(filepath.Join(outside, "escape")) || exists(filepath.Join(filepath.Dir(root), "escape")) {
				t.Fatal("file written outside the root")
			}
			if exists(filepath.Join(root, "d", "escape")) {
				t.Fatal("directories created through a symlinked parent")
			}
			if !exists(filepath.Join(outside, "keep")) {
				t.Fatal("whiteout removed a file outside the root")
			}
		})
	}
}

func TestSizeBounds(t *testing.T) {
	root := t.TempDir()
	err := Layer(root, mkTar(t, entry{name: "big", body: strings.Repeat("x", 100)}), Options{NoChown: true, MaxFileSize: 10})
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("got %v", err)
	}
	err = Layer(root, mkTar(t, entry{name: "a", body: "123456"}, entry{name: "b", body: "123456"}), Options{NoChown: true, MaxTotalSize: 10})
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("got %v", err)
	}
}

// TestOverlayWhiteouts: with OverlayWhiteouts a layer unpacked on its own
// keeps its deletions in overlayfs's form, and the kernel's overlayfs,
// stacking it on the layer below, shows exactly what applying both layers
// in one directory shows. A layer may not bring its own overlay xattrs.
func TestOverlayWhiteouts(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: trusted.* xattrs, device nodes and mounts")
	}
	base := []entry{
		{name: "etc/", typ: tar.TypeDir, mode: 0o755},
		{name: "etc/keep", body: "kept"},
		{name: "etc/gone", body: "deleted later"},
		{name: "var/", typ: tar.TypeDir, mode: 0o755},
		{name: "var/cache/", typ: tar.TypeDir, mode: 0o755},
		{name: "var/cache/old", body: "stale"},
	}
	top := []entry{
		{name: "etc/.wh.gone", uid: 7, gid: 8},
		{name: "var/cache/.wh..wh..opq"},
		{name: "var/cache/new", body: "fresh"},
	}
	l1, l2 := t.TempDir(), t.TempDir()
	if err := Layer(l1, mkTar(t, base...), Options{OverlayWhiteouts: true}); err != nil {
		t.Fatal(err)
	}
	if err := Layer(l2, mkTar(t, top...), Options{OverlayWhiteouts: true}); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(filepath.Join(l2, "etc", "gone"), &st); err != nil {
		t.Fatalf("whiteout: %v", err)
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFCHR || st.Rdev != 0 || st.Uid != 7 || st.Gid != 8 {
		t.Errorf("whiteout mode %o rdev %d owner %d:%d, want a 0:0 char device owned 7:8", st.Mode, st.Rdev, st.Uid, st.Gid)
	}
	buf := make([]byte, 8)
	n, err := syscall.Getxattr(filepath.Join(l2, "var", "cache"), "trusted.overlay.opaque", buf)
	if err != nil || string(buf[:n]) != "y" {
		t.Errorf("opaque xattr %q, %v", buf[:n], err)
	}

	merged := t.TempDir()
	if err := syscall.Mount("overlay", merged, "overlay", syscall.MS_RDONLY, "lowerdir="+l2+":"+l1); err != nil {
		t.Fatalf("overlay mount: %v", err)
	}
	defer syscall.Unmount(merged, syscall.MNT_DETACH)
	flat := t.TempDir()
	for _, l := range [][]entry{base, top} {
		if err := Layer(flat, mkTar(t, l...), Options{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{"etc/keep", "etc/gone", "var/cache/old", "var/cache/new"} {
		if a, b := exists(filepath.Join(merged, p)), exists(filepath.Join(flat, p)); a != b {
			t.Errorf("%s: present in the overlay %v, in the flat unpack %v", p, a, b)
		}
	}
	if exists(filepath.Join(merged, "etc/gone")) || !exists(filepath.Join(merged, "var/cache/new")) {
		t.Error("overlay view wrong: the whiteout or the opaque directory did not take")
	}

	evil := mkTar(t, entry{name: "d/", typ: tar.TypeDir, mode: 0o755, xattrs: map[string]string{"trusted.overlay.opaque": "y"}})
	if err := Layer(t.TempDir(), evil, Options{OverlayWhiteouts: true}); !errors.Is(err, ErrUnsafePath) {
		t.Errorf("layer setting trusted.overlay.opaque itself: %v", err)
	}
}
