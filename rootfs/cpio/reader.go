package cpio

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strconv"
	"strings"
)

// Limits on what a reader accepts; archives come from packages we did not
// build, so every size field is checked before it is used.
const (
	// MaxNameSize bounds an entry name (PATH_MAX).
	MaxNameSize = 4096
	// MaxFileSize bounds one regular file (the newc size field is 32 bits).
	MaxFileSize = 1<<32 - 1
	// MaxSymlinkSize bounds a symlink target.
	MaxSymlinkSize = 4096
)

// ErrFormat reports a malformed archive.
var ErrFormat = errors.New("cpio: malformed archive")

// Header describes one entry read from a newc archive.
type Header struct {
	Name  string // as stored, e.g. "./boot/vmlinuz-6.6"
	Mode  uint32 // unix mode: type and permission bits
	Ino   uint32
	Nlink uint32
	Size  int64
	Major uint32 // device of the file, for hard link identity
	Minor uint32
}

// File type bits of Header.Mode.
const (
	typeMask    = 0o170000
	typeDir     = 0o040000
	typeRegular = 0o100000
	typeSymlink = 0o120000
)

// IsDir, IsRegular and IsSymlink test the entry type.
func (h *Header) IsDir() bool     { return h.Mode&typeMask == typeDir }
func (h *Header) IsRegular() bool { return h.Mode&typeMask == typeRegular }
func (h *Header) IsSymlink() bool { return h.Mode&typeMask == typeSymlink }

// Reader reads a newc ("070701") or newc-with-checksum ("070702") archive.
type Reader struct {
	r      *bufio.Reader
	off    int64 // bytes consumed, for alignment
	remain int64 // unread data of the current entry
	pad    int64 // padding after the current entry's data
	done   bool
}

// NewReader reads an archive from r.
func NewReader(r io.Reader) *Reader { return &Reader{r: bufio.NewReaderSize(r, 64<<10)} }

func (r *Reader) skip(n int64) error {
	k, err := io.CopyN(io.Discard, r.r, n)
	r.off += k
	if err != nil {
		return fmt.Errorf("%w: truncated: %v", ErrFormat, err)
	}
	return nil
}

func hexField(b []byte) (uint32, error) {
	v, err := strconv.ParseUint(string(b), 16, 32)
	if err != nil {
		return 0, fmt.Errorf("%w: bad header field %q", ErrFormat, b)
	}
	return uint32(v), nil
}

// Next advances to the next entry; it returns io.EOF after the trailer.
func (r *Reader) Next() (*Header, error) {
	if r.done {
		return nil, io.EOF
	}
	if err := r.skip(r.remain + r.pad); err != nil {
		return nil, err
	}
	r.remain, r.pad = 0, 0
	var raw [110]byte
	n, err := io.ReadFull(r.r, raw[:])
	r.off += int64(n)
	if err != nil {
		return nil, fmt.Errorf("%w: truncated header: %v", ErrFormat, err)
	}
	if m := string(raw[:6]); m != "070701" && m != "070702" {
		return nil, fmt.Errorf("%w: magic %q is not newc", ErrFormat, m)
	}
	var f [13]uint32
	for i := range f {
		if f[i], err = hexField(raw[6+8*i : 14+8*i]); err != nil {
			return nil, err
		}
	}
	// ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
	h := &Header{Ino: f[0], Mode: f[1], Nlink: f[4], Size: int64(f[6]), Major: f[7], Minor: f[8]}
	nameSize := int64(f[11])
	if nameSize < 2 || nameSize > MaxNameSize {
		return nil, fmt.Errorf("%w: name size %d", ErrFormat, nameSize)
	}
	name := make([]byte, nameSize)
	n, err = io.ReadFull(r.r, name)
	r.off += int64(n)
	if err != nil {
		return nil, fmt.Errorf("%w: truncated name: %v", ErrFormat, err)
	}
	if name[nameSize-1] != 0 || strings.IndexByte(string(name[:nameSize-1]), 0) >= 0 {
		return nil, fmt.Errorf("%w: name is not one NUL-terminated string", ErrFormat)
	}
	h.Name = string(name[:nameSize-1])
	if err := r.skip((4 - r.off%4) % 4); err != nil {
		return nil, err
	}
	if h.Name == trailer {
		r.done = true
		return nil, io.EOF
	}
	r.remain = h.Size
	r.pad = (4 - h.Size%4) % 4
	return h, nil
}

// Read reads the current entry's data.
func (r *Reader) Read(b []byte) (int, error) {
	if r.remain == 0 {
		return 0, io.EOF
	}
	if int64(len(b)) > r.remain {
		b = b[:r.remain]
	}
	n, err := r.r.Read(b)
	r.remain -= int64(n)
	r.off += int64(n)
	if err == io.EOF && r.remain > 0 {
		err = fmt.Errorf("%w: truncated data", ErrFormat)
	}
	return n, err
}

// ExtractPath turns an archive name into a path relative to the extraction
// root, or reports that it must not be extracted ("." itself, absolute
// paths and paths that climb out are refused, not rewritten).
func ExtractPath(name string) (string, error) {
	n := strings.TrimPrefix(name, "./")
	if n == "." || n == "" {
		return "", nil
	}
	if path.IsAbs(n) || n == ".." || strings.HasPrefix(n, "../") || strings.Contains(n, "/../") || strings.HasSuffix(n, "/..") {
		return "", fmt.Errorf("%w: entry %q escapes the extraction directory", ErrFormat, name)
	}
	return path.Clean(n), nil
}

// Extract unpacks a newc archive into dir, which must exist. Everything is
// written through an os.Root, so neither names nor symlinks in the archive
// can reach outside dir. Owners and times are not restored; device nodes
// and FIFOs are refused. Hard links (entries sharing an inode, data in the
// last one, as rpm writes them) become hard links.
func Extract(r io.Reader, dir string) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("cpio: open extraction root: %w", err)
	}
	defer root.Close()
	type inode struct{ major, minor, ino uint32 }
	pending := map[inode][]string{} // hard links waiting for their data
	written := map[inode]string{}
	cr := NewReader(r)
	for {
		h, err := cr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		rel, err := ExtractPath(h.Name)
		if err != nil {
			return err
		}
		if rel == "" {
			continue
		}
		if d := path.Dir(rel); d != "." {
			if err := root.MkdirAll(d, 0o755); err != nil {
				return fmt.Errorf("cpio: create parent of %s: %w", rel, err)
			}
		}
		perm := fs.FileMode(h.Mode & 0o7777).Perm()
		switch {
		case h.IsDir():
			if err := root.Mkdir(rel, perm|0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("cpio: mkdir %s: %w", rel, err)
			}
		case h.IsSymlink():
			if h.Size > MaxSymlinkSize {
				return fmt.Errorf("%w: symlink %s target of %d bytes", ErrFormat, rel, h.Size)
			}
			target, err := io.ReadAll(cr)
			if err != nil {
				return err
			}
			if err := root.Symlink(string(target), rel); err != nil {
				return fmt.Errorf("cpio: symlink %s: %w", rel, err)
			}
		case h.IsRegular():
			id := inode{h.Major, h.Minor, h.Ino}
			if h.Nlink > 1 {
				if first, ok := written[id]; ok {
					if err := root.Link(first, rel); err != nil {
						return fmt.Errorf("cpio: link %s: %w", rel, err)
					}
					continue
				}
				if h.Size == 0 {
					pending[id] = append(pending[id], rel)
					continue
				}
			}
			if err := writeFile(root, rel, perm, cr); err != nil {
				return err
			}
			if h.Nlink > 1 {
				written[id] = rel
				for _, p := range pending[id] {
					if err := root.Link(rel, p); err != nil {
						return fmt.Errorf("cpio: link %s: %w", p, err)
					}
				}
				delete(pending, id)
			}
		default:
			return fmt.Errorf("cpio: entry %s has unsupported type %#o", rel, h.Mode&typeMask)
		}
	}
	// Links whose data never came are empty files.
	for _, names := range pending {
		for _, p := range names {
			if err := writeFile(root, p, 0o644, strings.NewReader("")); err != nil {
				return err
			}
		}
	}
	return nil
}

func writeFile(root *os.Root, rel string, perm fs.FileMode, data io.Reader) error {
	f, err := root.OpenFile(rel, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return fmt.Errorf("cpio: create %s: %w", rel, err)
	}
	if _, err := io.Copy(f, data); err != nil {
		f.Close()
		return fmt.Errorf("cpio: write %s: %w", rel, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("cpio: write %s: %w", rel, err)
	}
	// The umask narrowed the mode at creation; set it as archived.
	if err := root.Chmod(rel, perm); err != nil {
		return fmt.Errorf("cpio: chmod %s: %w", rel, err)
	}
	return nil
}
