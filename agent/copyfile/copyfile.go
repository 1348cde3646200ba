// Package copyfile writes the files the host sends with CopyFile (hostname,
// hosts, resolv.conf and similar when there is no shared filesystem), with
// the Kata agent's semantics: a regular file arrives in chunks at offsets
// and appears, complete, at its path when the last chunk is written; a
// directory or a symlink arrives in one request (the mode's type bits say
// which; a symlink's target is the data). Everything is confined to one
// root directory.
package copyfile

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/cocoon-containers/cocoon/rpc/agentpb"
)

// DefaultRoot is where the Kata runtime copies container files.
const DefaultRoot = "/run/kata-containers/shared/containers"

// Limits on host input.
const (
	MaxFileSize  = 64 << 20
	MaxChunkSize = 4 << 20
	maxPathLen   = 4096
)

// tmpSuffix marks a regular file still being written.
const tmpSuffix = ".cocoon-copy"

// Copier writes CopyFile requests under a root.
type Copier struct {
	root string
	mu   sync.Mutex
}

// New returns a Copier confined to root.
func New(root string) *Copier { return &Copier{root: filepath.Clean(root)} }

func bad(format string, args ...any) error {
	return fmt.Errorf("copy file: "+format+": %w", append(args, errdefs.ErrInvalidArgument)...)
}

// CopyFile applies one request.
func (c *Copier) CopyFile(ctx context.Context, req *agentpb.CopyFileRequest) error {
	p := req.GetPath()
	if len(p) > maxPathLen || !filepath.IsAbs(p) || filepath.Clean(p) != p || strings.ContainsRune(p, 0) {
		return bad("path %q: want an absolute, clean path", p)
	}
	if !strings.HasPrefix(p, c.root+"/") {
		return bad("path %q: not under %s", p, c.root)
	}
	if req.GetUid() < -1 || req.GetGid() < -1 {
		return bad("owner %d:%d", req.GetUid(), req.GetGid())
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := os.MkdirAll(c.root, 0o755); err != nil {
		return err
	}
	if err := c.makeParents(filepath.Dir(p), req.GetDirMode()); err != nil {
		return err
	}
	perm := req.GetFileMode() & 0o1777 // no set-id bits from the host
	switch req.GetFileMode() & unix.S_IFMT {
	case unix.S_IFDIR:
		if err := os.Mkdir(p, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("copy file: mkdir %s: %w", p, err)
		}
		if err := noSymlink(p); err != nil {
			return err
		}
		return c.finish(p, perm, req)
	case unix.S_IFLNK:
		target := string(req.GetData())
		if target == "" || len(target) > maxPathLen || strings.ContainsRune(target, 0) {
			return bad("symlink %s: bad target", p)
		}
		if err := removeNonDir(p); err != nil {
			return err
		}
		if err := os.Symlink(target, p); err != nil {
			return fmt.Errorf("copy file: symlink %s: %w", p, err)
		}
		return os.Lchown(p, int(req.GetUid()), int(req.GetGid()))
	case unix.S_IFREG, 0:
		return c.writeChunk(p, perm, req)
	default:
		return bad("%s: file type %#o is not a regular file, directory or symlink", p, req.GetFileMode()&unix.S_IFMT)
	}
}

// makeParents creates the directories between the root and dir, refusing
// to go through a symlink.
func (c *Copier) makeParents(dir string, mode uint32) error {
	if mode == 0 {
		mode = 0o755
	}
	rel, err := filepath.Rel(c.root, dir)
	if err != nil || strings.HasPrefix(rel, "..") {
		return bad("%s is outside %s", dir, c.root)
	}
	cur := c.root
	if rel == "." {
		return nil
	}
	for _, part := range strings.Split(rel, "/") {
		cur = filepath.Join(cur, part)
		fi, err := os.Lstat(cur)
		switch {
		case errors.Is(err, os.ErrNotExist):
			if err := unix.Mkdir(cur, mode&0o1777); err != nil && !errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("copy file: mkdir %s: %w", cur, err)
			}
		case err != nil:
			return err
		case fi.Mode()&os.ModeSymlink != 0:
			return bad("%s is a symlink", cur)
		case !fi.IsDir():
			return bad("%s is not a directory", cur)
		}
	}
	return nil
}

func noSymlink(p string) error {
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeSymlink != 0 {
		return bad("%s is a symlink", p)
	}
	return nil
}

func removeNonDir(p string) error {
	fi, err := os.Lstat(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return bad("%s is a directory", p)
	}
	return os.Remove(p)
}

// writeChunk writes one chunk into the temporary file, and when the file
// is complete gives it its mode and owner and renames it into place.
func (c *Copier) writeChunk(p string, perm uint32, req *agentpb.CopyFileRequest) error {
	size, off, data := req.GetFileSize(), req.GetOffset(), req.GetData()
	if size < 0 || size > MaxFileSize {
		return bad("%s: size %d out of range (at most %d)", p, size, MaxFileSize)
	}
	if len(data) > MaxChunkSize {
		return bad("%s: chunk of %d bytes, at most %d", p, len(data), MaxChunkSize)
	}
	if off < 0 || off+int64(len(data)) > size {
		return bad("%s: chunk at %d+%d beyond the file size %d", p, off, len(data), size)
	}
	tmp := p + tmpSuffix
	flags := unix.O_WRONLY | unix.O_CREAT | unix.O_NOFOLLOW | unix.O_CLOEXEC
	if off == 0 {
		flags |= unix.O_TRUNC
	}
	fd, err := unix.Open(tmp, flags, 0o600)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return bad("%s is a symlink", tmp)
		}
		return fmt.Errorf("copy file: open %s: %w", tmp, err)
	}
	f := os.NewFile(uintptr(fd), tmp)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return bad("%s is not a regular file", tmp)
	}
	if _, err := f.WriteAt(data, off); err != nil {
		return fmt.Errorf("copy file: write %s: %w", tmp, err)
	}
	if off+int64(len(data)) < size {
		return nil
	}
	if err := f.Truncate(size); err != nil {
		return err
	}
	if err := f.Chown(int(req.GetUid()), int(req.GetGid())); err != nil {
		return fmt.Errorf("copy file: chown %s: %w", p, err)
	}
	if err := unix.Fchmod(fd, perm); err != nil {
		return fmt.Errorf("copy file: chmod %s: %w", p, err)
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if fi, err := os.Lstat(p); err == nil && fi.IsDir() {
		os.Remove(tmp)
		return bad("%s is a directory", p)
	}
	if err := os.Rename(tmp, p); err != nil {
		return fmt.Errorf("copy file: rename into %s: %w", p, err)
	}
	return nil
}

// finish gives a directory its mode and owner.
func (c *Copier) finish(p string, perm uint32, req *agentpb.CopyFileRequest) error {
	if err := os.Lchown(p, int(req.GetUid()), int(req.GetGid())); err != nil {
		return fmt.Errorf("copy file: chown %s: %w", p, err)
	}
	if err := unix.Chmod(p, perm); err != nil {
		return fmt.Errorf("copy file: chmod %s: %w", p, err)
	}
	return nil
}
