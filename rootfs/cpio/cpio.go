// Package cpio writes reproducible initramfs archives in the "newc" format
// (SVR4 without CRC) that the Linux kernel unpacks: entries sorted by path,
// every parent directory present, owner root, mtime 0, inode numbers in
// order.
package cpio

import (
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"
)

// Entry is one file in the archive.
type Entry struct {
	Path string      // absolute or relative; stored without the leading "/"
	Mode fs.FileMode // type bits and permissions
	Data []byte      // file contents, or the symlink target
}

// Archive collects entries and writes them in a deterministic order.
type Archive struct {
	entries map[string]Entry
}

// New returns an empty archive.
func New() *Archive { return &Archive{entries: map[string]Entry{}} }

func clean(p string) (string, error) {
	c := strings.TrimPrefix(path.Clean("/"+p), "/")
	if c == "" || c == "." {
		return "", fmt.Errorf("cpio: bad path %q", p)
	}
	return c, nil
}

// AddFile adds a regular file.
func (a *Archive) AddFile(p string, perm fs.FileMode, data []byte) error {
	return a.add(p, perm.Perm(), data)
}

// AddDir adds a directory.
func (a *Archive) AddDir(p string, perm fs.FileMode) error {
	return a.add(p, fs.ModeDir|perm.Perm(), nil)
}

// AddSymlink adds a symbolic link to target.
func (a *Archive) AddSymlink(p, target string) error {
	return a.add(p, fs.ModeSymlink|0o777, []byte(target))
}

func (a *Archive) add(p string, mode fs.FileMode, data []byte) error {
	c, err := clean(p)
	if err != nil {
		return err
	}
	if old, ok := a.entries[c]; ok && !(old.Mode.IsDir() && mode.IsDir()) {
		return fmt.Errorf("cpio: %s added twice", c)
	}
	a.entries[c] = Entry{Path: c, Mode: mode, Data: data}
	// Parents default to 0755 directories.
	for d := path.Dir(c); d != "." && d != "/"; d = path.Dir(d) {
		if e, ok := a.entries[d]; ok {
			if !e.Mode.IsDir() {
				return fmt.Errorf("cpio: %s is not a directory (parent of %s)", d, c)
			}
			continue
		}
		a.entries[d] = Entry{Path: d, Mode: fs.ModeDir | 0o755}
	}
	return nil
}

// Entries returns the entries in archive order.
func (a *Archive) Entries() []Entry {
	out := make([]Entry, 0, len(a.entries))
	for _, e := range a.entries {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out
}

const trailer = "TRAILER!!!"

// WriteTo writes the archive in newc format.
func (a *Archive) WriteTo(w io.Writer) (int64, error) {
	cw := &countWriter{w: w}
	for i, e := range a.Entries() {
		if err := writeEntry(cw, uint32(i+1), e); err != nil {
			return cw.n, err
		}
	}
	if err := writeHeader(cw, 0, 0, 1, 0, trailer); err != nil {
		return cw.n, err
	}
	// Pad the archive to 512 bytes like cpio(1) does.
	if pad := (512 - cw.n%512) % 512; pad > 0 {
		if _, err := cw.Write(make([]byte, pad)); err != nil {
			return cw.n, err
		}
	}
	return cw.n, nil
}

func unixMode(m fs.FileMode) uint32 {
	mode := uint32(m.Perm())
	switch {
	case m.IsDir():
		mode |= 0o040000
	case m&fs.ModeSymlink != 0:
		mode |= 0o120000
	default:
		mode |= 0o100000
	}
	return mode
}

func writeEntry(w *countWriter, ino uint32, e Entry) error {
	nlink := uint32(1)
	if e.Mode.IsDir() {
		nlink = 2
	}
	if err := writeHeader(w, ino, unixMode(e.Mode), nlink, uint32(len(e.Data)), e.Path); err != nil {
		return err
	}
	if _, err := w.Write(e.Data); err != nil {
		return err
	}
	return pad4(w)
}

func writeHeader(w *countWriter, ino, mode, nlink, size uint32, name string) error {
	// magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
	// rdevmajor, rdevminor, namesize, check
	_, err := fmt.Fprintf(w, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, len(name)+1, 0)
	if err != nil {
		return err
	}
	if _, err := io.WriteString(w, name+"\x00"); err != nil {
		return err
	}
	return pad4(w)
}

func pad4(w *countWriter) error {
	if p := (4 - w.n%4) % 4; p > 0 {
		_, err := w.Write(make([]byte, p))
		return err
	}
	return nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += int64(n)
	return n, err
}
