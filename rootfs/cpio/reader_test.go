package cpio

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestReaderRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	if _, err := sample(t).WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	r := NewReader(&buf)
	var got []string
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%s %o %d", h.Name, h.Mode, len(data)))
		if h.Name == "init" && string(data) != "#!/bin/sh\necho hi\n" {
			t.Errorf("init data = %q", data)
		}
	}
	want := []string{
		"bin 40755 0", "bin/sh 120777 7", "etc 40755 0", "etc/cocoon 40755 0",
		"etc/cocoon/modules.load 100644 20", "init 100755 18", "lib 40755 0",
		"lib/modules 40755 0", "lib/modules/x 40755 0", "lib/modules/x/a.ko 100644 1000", "proc 40555 0",
	}
	if g, w := strings.Join(got, "\n"), strings.Join(want, "\n"); g != w {
		t.Fatalf("entries:\n%s\nwant:\n%s", g, w)
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("Next after trailer = %v, want EOF", err)
	}
}

// TestExtractGNUArchive reads what cpio(1) writes, hard links included.
func TestExtractGNUArchive(t *testing.T) {
	src := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(src, "boot"), 0o755))
	must(os.MkdirAll(filepath.Join(src, "lib/modules/6.6/kernel"), 0o755))
	must(os.WriteFile(filepath.Join(src, "boot/vmlinuz-6.6"), bytes.Repeat([]byte("k"), 5001), 0o644))
	must(os.WriteFile(filepath.Join(src, "lib/modules/6.6/kernel/a.ko"), []byte("module a"), 0o600))
	must(os.Link(filepath.Join(src, "lib/modules/6.6/kernel/a.ko"), filepath.Join(src, "lib/modules/6.6/kernel/b.ko")))
	must(os.Symlink("../../../boot/vmlinuz-6.6", filepath.Join(src, "lib/modules/6.6/vmlinuz")))
	list := "./boot\n./boot/vmlinuz-6.6\n./lib\n./lib/modules\n./lib/modules/6.6\n./lib/modules/6.6/kernel\n./lib/modules/6.6/kernel/a.ko\n./lib/modules/6.6/kernel/b.ko\n./lib/modules/6.6/vmlinuz\n"
	cmd := exec.Command("cpio", "-o", "-H", "newc", "--quiet")
	cmd.Dir, cmd.Stdin = src, strings.NewReader(list)
	arc, err := cmd.Output()
	if err != nil {
		t.Fatalf("cpio -o: %v", err)
	}
	dst := t.TempDir()
	if err := Extract(bytes.NewReader(arc), dst); err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct {
		path, want string
		mode       os.FileMode
	}{
		{"boot/vmlinuz-6.6", strings.Repeat("k", 5001), 0o644},
		{"lib/modules/6.6/kernel/a.ko", "module a", 0o600},
		{"lib/modules/6.6/kernel/b.ko", "module a", 0o600},
		{"lib/modules/6.6/vmlinuz", strings.Repeat("k", 5001), 0o644},
	} {
		b, err := os.ReadFile(filepath.Join(dst, f.path))
		if err != nil || string(b) != f.want {
			t.Errorf("%s = %d bytes, %v; want %d bytes", f.path, len(b), err, len(f.want))
			continue
		}
		st, _ := os.Stat(filepath.Join(dst, f.path))
		if got := st.Mode().Perm(); got != f.mode {
			t.Errorf("%s mode = %v, want %v", f.path, got, f.mode)
		}
	}
	a, _ := os.Stat(filepath.Join(dst, "lib/modules/6.6/kernel/a.ko"))
	b, _ := os.Stat(filepath.Join(dst, "lib/modules/6.6/kernel/b.ko"))
	if !os.SameFile(a, b) {
		t.Error("a.ko and b.ko are not one hard-linked file")
	}
}

func archiveOf(t *testing.T, entries ...Entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	cw := &countWriter{w: &buf}
	for i, e := range entries {
		if err := writeEntry(cw, uint32(i+1), e); err != nil {
			t.Fatal(err)
		}
	}
	if err := writeHeader(cw, 0, 0, 1, 0, trailer); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestExtractRefusesEscapes(t *testing.T) {
	tests := []struct {
		name    string
		entries []Entry
	}{
		{"dotdot", []Entry{{Path: "../evil", Mode: 0o644, Data: []byte("x")}}},
		{"inner dotdot", []Entry{{Path: "./a/../../evil", Mode: 0o644, Data: []byte("x")}}},
		{"absolute", []Entry{{Path: "/etc/evil", Mode: 0o644, Data: []byte("x")}}},
		{"through symlink", []Entry{
			{Path: "out", Mode: os.ModeSymlink | 0o777, Data: []byte("..")},
			{Path: "out/evil", Mode: 0o644, Data: []byte("x")},
		}},
		{"through absolute symlink", []Entry{
			{Path: "tmp", Mode: os.ModeSymlink | 0o777, Data: []byte("/tmp")},
			{Path: "tmp/evil", Mode: 0o644, Data: []byte("x")},
		}},
		{"file twice", []Entry{
			{Path: "a", Mode: 0o644, Data: []byte("x")},
			{Path: "a", Mode: 0o644, Data: []byte("y")},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parent := t.TempDir()
			dst := filepath.Join(parent, "dst")
			os.Mkdir(dst, 0o755)
			err := Extract(bytes.NewReader(archiveOf(t, tt.entries...)), dst)
			if err == nil {
				t.Fatal("Extract succeeded, want an error")
			}
			if _, serr := os.Stat(filepath.Join(parent, "evil")); serr == nil {
				t.Fatal("a file was written outside the extraction directory")
			}
			if _, serr := os.Stat("/tmp/evil"); serr == nil && tt.name == "through absolute symlink" {
				t.Fatal("a file was written to /tmp through a symlink")
			}
		})
	}
}

func TestReaderRejectsMalformed(t *testing.T) {
	good := archiveOf(t, Entry{Path: "a", Mode: 0o644, Data: []byte("hello")})
	tests := map[string][]byte{
		"empty":          nil,
		"bad magic":      append([]byte("070707"), good[6:]...),
		"bad hex":        append(append([]byte("070701"), []byte("zzzzzzzz")...), good[14:]...),
		"truncated name": good[:112],
		"truncated data": good[:118],
		"no trailer":     good[:len(good)-124],
	}
	for name, b := range tests {
		t.Run(name, func(t *testing.T) {
			r := NewReader(bytes.NewReader(b))
			var err error
			for err == nil {
				if _, err = r.Next(); err == nil {
					_, err = io.ReadAll(r)
				}
			}
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("error = %v, want ErrFormat", err)
			}
		})
	}
}

func FuzzReader(f *testing.F) {
	var buf bytes.Buffer
	a := New()
	a.AddFile("x/y", 0o644, []byte("data"))
	a.AddSymlink("z", "x/y")
	a.WriteTo(&buf)
	f.Add(buf.Bytes())
	f.Add([]byte("070701"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := NewReader(bytes.NewReader(b))
		var total int64
		for i := 0; i < 1000; i++ {
			h, err := r.Next()
			if err != nil {
				if err != io.EOF && !errors.Is(err, ErrFormat) {
					t.Fatalf("unexpected error class: %v", err)
				}
				return
			}
			if h.Size < 0 || len(h.Name) >= MaxNameSize {
				t.Fatalf("header out of bounds: %+v", h)
			}
			n, _ := io.Copy(io.Discard, r)
			total += n
			if total > int64(len(b)) {
				t.Fatalf("read %d data bytes from a %d-byte input", total, len(b))
			}
		}
	})
}
