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
		entry{name: "bin/tool-link", typ: tar.TypeLink, link: "bin/tool"},
		entry{name: "bin/sh", typ: tar.TypeSymlink, link: "/bin/tool"},
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
