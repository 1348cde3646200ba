package copyfile

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/cocoon-containers/cocoon/rpc/agentpb"
)

func TestRegularFileInChunks(t *testing.T) {
	root := t.TempDir()
	c := New(root)
	ctx := context.Background()
	data := bytes.Repeat([]byte("0123456789"), 1000)
	p := filepath.Join(root, "c1", "etc", "hosts")
	for off := 0; off < len(data); off += 4096 {
		end := min(off+4096, len(data))
		req := &agentpb.CopyFileRequest{Path: p, FileSize: int64(len(data)), FileMode: unix.S_IFREG | 0o644, DirMode: 0o750,
			Uid: 1000, Gid: 1001, Offset: int64(off), Data: data[off:end]}
		if err := c.CopyFile(ctx, req); err != nil {
			t.Fatal(err)
		}
		if end < len(data) {
			if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("file visible before its last chunk (%v)", err)
			}
		}
	}
	got, err := os.ReadFile(p)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("content differs (%v)", err)
	}
	var st unix.Stat_t
	unix.Stat(p, &st)
	if st.Mode&0o7777 != 0o644 || st.Uid != 1000 || st.Gid != 1001 {
		t.Errorf("mode %o owner %d:%d", st.Mode&0o7777, st.Uid, st.Gid)
	}
	unix.Stat(filepath.Join(root, "c1", "etc"), &st)
	if st.Mode&0o777 != 0o750 {
		t.Errorf("parent dir mode %o, want 750", st.Mode&0o777)
	}
	if _, err := os.Stat(p + tmpSuffix); !errors.Is(err, os.ErrNotExist) {
		t.Error("temporary file left")
	}
	// An empty file in one request.
	empty := filepath.Join(root, "c1", "empty")
	if err := c.CopyFile(ctx, &agentpb.CopyFileRequest{Path: empty, FileMode: 0o600}); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(empty); err != nil || fi.Size() != 0 {
		t.Errorf("empty file: %v", err)
	}
}

func TestDirectoryAndSymlink(t *testing.T) {
	root := t.TempDir()
	c := New(root)
	ctx := context.Background()
	d := filepath.Join(root, "c1", "dir")
	if err := c.CopyFile(ctx, &agentpb.CopyFileRequest{Path: d, FileMode: unix.S_IFDIR | 0o4711, Uid: 7, Gid: 8}); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	unix.Stat(d, &st)
	if st.Mode&unix.S_IFMT != unix.S_IFDIR || st.Mode&0o7777 != 0o711 || st.Uid != 7 {
		t.Errorf("dir mode %o owner %d (set-id bits must be dropped)", st.Mode, st.Uid)
	}
	l := filepath.Join(root, "c1", "link")
	for _, target := range []string{"../etc/hosts", "/etc/resolv.conf"} {
		if err := c.CopyFile(ctx, &agentpb.CopyFileRequest{Path: l, FileMode: unix.S_IFLNK | 0o777, Data: []byte(target)}); err != nil {
			t.Fatal(err)
		}
		if got, err := os.Readlink(l); err != nil || got != target {
			t.Errorf("symlink = %q, %v", got, err)
		}
	}
}

func TestRefusesEscapes(t *testing.T) {
	base := t.TempDir()
	root := filepath.Join(base, "root")
	outside := filepath.Join(base, "outside")
	os.MkdirAll(filepath.Join(root, "c1"), 0o755)
	os.MkdirAll(outside, 0o755)
	os.Symlink(outside, filepath.Join(root, "c1", "escape"))
	os.Symlink(filepath.Join(outside, "target"), filepath.Join(root, "c1", "file"+tmpSuffix))
	c := New(root)
	ctx := context.Background()
	tests := map[string]*agentpb.CopyFileRequest{
		"outside root":         {Path: "/etc/passwd", FileSize: 1, Data: []byte("x")},
		"dotdot":               {Path: root + "/c1/../../outside/x", FileSize: 1, Data: []byte("x")},
		"relative":             {Path: "c1/x", FileSize: 1, Data: []byte("x")},
		"root itself":          {Path: root, FileMode: unix.S_IFDIR | 0o755},
		"through a symlink":    {Path: root + "/c1/escape/x", FileSize: 1, Data: []byte("x")},
		"symlinked temp file":  {Path: root + "/c1/file", FileSize: 1, Data: []byte("x")},
		"chunk past the size":  {Path: root + "/c1/a", FileSize: 2, Offset: 1, Data: []byte("xy")},
		"negative offset":      {Path: root + "/c1/a", FileSize: 2, Offset: -1, Data: []byte("x")},
		"huge file":            {Path: root + "/c1/a", FileSize: MaxFileSize + 1},
		"device node":          {Path: root + "/c1/dev", FileMode: unix.S_IFCHR | 0o666},
		"fifo":                 {Path: root + "/c1/fifo", FileMode: unix.S_IFIFO | 0o666},
		"empty symlink target": {Path: root + "/c1/l", FileMode: unix.S_IFLNK | 0o777},
		"bad owner":            {Path: root + "/c1/a", FileSize: 1, Data: []byte("x"), Uid: -5},
	}
	for name, req := range tests {
		if err := c.CopyFile(ctx, req); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: %v, want invalid argument", name, err)
		}
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Errorf("written outside the root: %v", ents)
	}
	big := make([]byte, MaxChunkSize+1)
	if err := c.CopyFile(ctx, &agentpb.CopyFileRequest{Path: root + "/c1/big", FileSize: int64(len(big)), Data: big}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("oversized chunk: %v", err)
	}
}
