// Package unpack applies OCI image layers (tar streams) to a root filesystem
// directory. Every write goes through an os.Root opened on the target, so no
// entry, parent directory or symlink can reach outside it; entries whose
// names hold ".." are refused outright. OCI whiteouts (.wh.<name>) and opaque
// directories (.wh..wh..opq) are honoured, hardlinks stay inside the root,
// ownership, modes, times and xattrs are applied, device nodes are refused
// unless the caller allows them, and sizes are bounded.
package unpack

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
	// overlayfs reads its whiteout metadata from trusted.overlay.*; a
	// layer may not set those itself.
	overlayOpaqueXattr = "trusted.overlay.opaque"
	overlayXattrPrefix = "trusted.overlay."
)

// Options bound and shape an unpack. The zero value is usable: devices
// refused, default size limits, ownership applied.
type Options struct {
	// AllowDevices lets character/block device and FIFO entries be created.
	AllowDevices bool
	// MaxFileSize bounds one regular file (default 8 GiB).
	MaxFileSize int64
	// MaxTotalSize bounds the bytes written by one layer (default 64 GiB).
	MaxTotalSize int64
	// MaxEntries bounds the entries of one layer (default 4 Mi).
	MaxEntries int
	// NoChown skips chown (for unprivileged callers).
	NoChown bool
	// OverlayWhiteouts unpacks one layer on its own, for use as an
	// overlayfs lower layer, the way containerd's overlay snapshotter
	// stores it: a whiteout becomes a 0:0 character device, an opaque
	// marker the directory's trusted.overlay.opaque=y xattr. Without it,
	// whiteouts delete from what lower layers unpacked into the same root.
	OverlayWhiteouts bool
	// Parents are the directories of the lower layers, top first, when a
	// layer is unpacked on its own: a directory this layer implies (it
	// has entries below it but no entry of its own) takes its mode,
	// ownership and non-trusted xattrs from the first parent holding a
	// directory there, as containerd's overlay applier does.
	Parents []string
}

func (o Options) withDefaults() Options {
	if o.MaxFileSize <= 0 {
		o.MaxFileSize = 8 << 30
	}
	if o.MaxTotalSize <= 0 {
		o.MaxTotalSize = 64 << 30
	}
	if o.MaxEntries <= 0 {
		o.MaxEntries = 4 << 20
	}
	return o
}

// EntryError names the tar entry that was refused or failed.
type EntryError struct {
	Name string
	Err  error
}

func (e *EntryError) Error() string { return fmt.Sprintf("layer entry %q: %v", e.Name, e.Err) }
func (e *EntryError) Unwrap() error { return e.Err }

// ErrUnsafePath is wrapped by errors for entries that would leave the root.
var ErrUnsafePath = errors.New("path escapes the rootfs")

// ErrTooLarge is wrapped when a size bound is exceeded.
var ErrTooLarge = errors.New("size limit exceeded")

// Layer applies one uncompressed layer tar stream on top of the directory
// rootfs, which must exist.
func Layer(rootfs string, r io.Reader, opts Options) error {
	root, err := os.OpenRoot(rootfs)
	if err != nil {
		return fmt.Errorf("open rootfs: %w", err)
	}
	defer root.Close()
	return applyLayer(root, r, opts.withDefaults())
}

type dirTime struct {
	name  string
	mtime time.Time
}

func applyLayer(root *os.Root, r io.Reader, opts Options) error {
	tr := tar.NewReader(r)
	// Paths this layer has written: an opaque marker removes everything
	// below its directory that came from lower layers only.
	written := map[string]bool{}
	var dirs []dirTime
	var total int64
	for n := 0; ; n++ {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read layer tar: %w", err)
		}
		if n >= opts.MaxEntries {
			return fmt.Errorf("layer has more than %d entries: %w", opts.MaxEntries, ErrTooLarge)
		}
		name, err := cleanName(hdr.Name)
		if err != nil {
			return &EntryError{hdr.Name, err}
		}
		if name == "." {
			if hdr.Typeflag == tar.TypeDir {
				if err := applyMeta(root, ".", hdr, opts); err != nil {
					return &EntryError{hdr.Name, err}
				}
			}
			continue
		}
		dir, base := path.Split(name)
		dir = strings.TrimSuffix(dir, "/")
		if dir == "" {
			dir = "."
		}
		if base == opaqueMarker {
			if opts.OverlayWhiteouts {
				err = overlayOpaque(root, dir, opts)
			} else {
				err = makeOpaque(root, dir, written)
			}
			if err != nil {
				return &EntryError{hdr.Name, err}
			}
			continue
		}
		if strings.HasPrefix(base, whiteoutPrefix) {
			victim := path.Join(dir, strings.TrimPrefix(base, whiteoutPrefix))
			if opts.OverlayWhiteouts {
				if err := overlayWhiteout(root, victim, hdr, opts); err != nil {
					return &EntryError{hdr.Name, mapRootErr(err)}
				}
				written[victim] = true
				continue
			}
			if err := checkParents(root, victim); err != nil {
				return &EntryError{hdr.Name, err}
			}
			if err := root.RemoveAll(victim); err != nil {
				return &EntryError{hdr.Name, err}
			}
			continue
		}
		// Parents first: MkdirAll would follow a symlink that stays inside.
		if err := checkParents(root, name); err != nil {
			return &EntryError{hdr.Name, err}
		}
		if err := mkdirImplied(root, dir, opts); err != nil {
			return &EntryError{hdr.Name, mapRootErr(err)}
		}
		size, err := writeEntry(root, name, hdr, tr, opts)
		if err != nil {
			return &EntryError{hdr.Name, mapRootErr(err)}
		}
		total += size
		if total > opts.MaxTotalSize {
			return fmt.Errorf("layer writes more than %d bytes: %w", opts.MaxTotalSize, ErrTooLarge)
		}
		written[name] = true
		if hdr.Typeflag == tar.TypeDir {
			dirs = append(dirs, dirTime{name, hdr.ModTime})
		}
	}
	// Directory times last: writing into a directory changes its mtime.
	for i := len(dirs) - 1; i >= 0; i-- {
		_ = root.Chtimes(dirs[i].name, dirs[i].mtime, dirs[i].mtime)
	}
	return nil
}

// cleanName turns a tar name into a root-relative slash path; names with ".."
// components are refused, a leading "/" or "./" is dropped.
func cleanName(name string) (string, error) {
	if strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("NUL in name: %w", ErrUnsafePath)
	}
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "", fmt.Errorf("\"..\" component: %w", ErrUnsafePath)
		}
	}
	n := path.Clean("/" + name)
	if n == "/" {
		return ".", nil
	}
	return n[1:], nil
}

// checkParents refuses a name whose parent directories are anything but real
// directories inside the root (a symlinked parent, even one that resolves
// inside, would make the entry land somewhere the tar did not say).
func checkParents(root *os.Root, name string) error {
	parts := strings.Split(name, "/")
	cur := ""
	for _, p := range parts[:len(parts)-1] {
		cur = path.Join(cur, p)
		fi, err := root.Lstat(cur)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return mapRootErr(err)
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			return fmt.Errorf("parent %q is a symlink: %w", cur, ErrUnsafePath)
		}
		if !fi.IsDir() {
			return fmt.Errorf("parent %q is not a directory", cur)
		}
	}
	return nil
}

func mapRootErr(err error) error {
	if err != nil && strings.Contains(err.Error(), "path escapes from parent") {
		return fmt.Errorf("%v: %w", err, ErrUnsafePath)
	}
	return err
}

func makeOpaque(root *os.Root, dir string, written map[string]bool) error {
	if err := checkParents(root, path.Join(dir, "x")); err != nil {
		return err
	}
	f, err := root.Open(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return mapRootErr(err)
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return err
	}
	for _, n := range names {
		p := path.Join(dir, n)
		if written[p] {
			continue
		}
		if err := root.RemoveAll(p); err != nil {
			return err
		}
	}
	return nil
}

// mkdirImplied creates dir and its missing parents, 0755 root-owned, or
// like the same directory in opts.Parents.
func mkdirImplied(root *os.Root, dir string, opts Options) error {
	if dir == "." || dir == "" {
		return nil
	}
	if fi, err := root.Lstat(dir); err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("%s is not a directory", dir)
		}
		return nil
	}
	if err := mkdirImplied(root, path.Dir(dir), opts); err != nil {
		return err
	}
	if err := root.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	for _, p := range opts.Parents {
		done, err := copyDirInfo(root, dir, p, opts)
		if err != nil {
			return fmt.Errorf("implied directory %s: %w", dir, err)
		}
		if done {
			break
		}
	}
	return nil
}

// copyDirInfo gives dir the metadata of the same path in the layer
// directory parent. It reports whether parent settled it: it has a
// directory there (copied), or something else (defaults kept).
func copyDirInfo(root *os.Root, dir, parent string, opts Options) (bool, error) {
	pr, err := os.OpenRoot(parent)
	if err != nil {
		return false, err
	}
	defer pr.Close()
	src, err := pr.OpenFile(dir, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_PATH, 0)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENOTDIR) {
		return false, nil
	}
	if err != nil {
		return false, mapRootErr(err)
	}
	defer src.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(src.Fd()), &st); err != nil {
		return false, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return true, nil
	}
	dst, err := root.OpenFile(dir, os.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return false, err
	}
	defer dst.Close()
	if !opts.NoChown {
		if err := dst.Chown(int(st.Uid), int(st.Gid)); err != nil {
			return false, err
		}
	}
	if err := unix.Fchmod(int(dst.Fd()), st.Mode&0o7777); err != nil {
		return false, err
	}
	srcPath := fmt.Sprintf("/proc/self/fd/%d", src.Fd())
	names, err := listXattrs(srcPath)
	if err != nil {
		return false, err
	}
	for _, n := range names {
		if strings.HasPrefix(n, "trusted.") {
			continue // overlayfs metadata stays with its own layer
		}
		v, err := getXattr(srcPath, n)
		if err != nil {
			return false, err
		}
		if err := unix.Fsetxattr(int(dst.Fd()), n, v, 0); err != nil && !errors.Is(err, unix.ENOTSUP) {
			return false, fmt.Errorf("xattr %s: %w", n, err)
		}
	}
	return true, nil
}

func listXattrs(p string) ([]string, error) {
	n, err := unix.Listxattr(p, nil)
	if err != nil || n == 0 {
		if errors.Is(err, unix.ENOTSUP) {
			err = nil
		}
		return nil, err
	}
	buf := make([]byte, n)
	if n, err = unix.Listxattr(p, buf); err != nil {
		return nil, err
	}
	var names []string
	for _, b := range bytes.Split(buf[:n], []byte{0}) {
		if len(b) > 0 {
			names = append(names, string(b))
		}
	}
	return names, nil
}

func getXattr(p, name string) ([]byte, error) {
	n, err := unix.Getxattr(p, name, nil)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, n)
	n, err = unix.Getxattr(p, name, buf)
	if err != nil {
		return nil, err
	}
	return buf[:n], nil
}

// overlayOpaque marks dir opaque for overlayfs.
func overlayOpaque(root *os.Root, dir string, opts Options) error {
	if err := checkParents(root, path.Join(dir, "x")); err != nil {
		return err
	}
	if err := mkdirImplied(root, dir, opts); err != nil {
		return mapRootErr(err)
	}
	f, err := root.OpenFile(dir, os.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return mapRootErr(err)
	}
	defer f.Close()
	return unix.Fsetxattr(int(f.Fd()), overlayOpaqueXattr, []byte("y"), 0)
}

// overlayWhiteout records the deletion of name as overlayfs does: a
// character device 0:0 owned like the whiteout entry.
func overlayWhiteout(root *os.Root, name string, hdr *tar.Header, opts Options) error {
	if err := checkParents(root, name); err != nil {
		return err
	}
	if err := mkdirImplied(root, path.Dir(name), opts); err != nil {
		return err
	}
	if err := replace(root, name, false); err != nil {
		return err
	}
	wh := &tar.Header{Typeflag: tar.TypeChar, Mode: 0, Uid: hdr.Uid, Gid: hdr.Gid}
	if err := mknod(root, name, wh); err != nil {
		return err
	}
	if opts.NoChown {
		return nil
	}
	f, err := root.OpenFile(name, os.O_RDONLY|unix.O_PATH|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return os.Chown(fmt.Sprintf("/proc/self/fd/%d", f.Fd()), hdr.Uid, hdr.Gid)
}

// replace removes what is at name unless both it and the new entry are
// directories (a directory entry then only updates metadata).
func replace(root *os.Root, name string, newIsDir bool) error {
	fi, err := root.Lstat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() && newIsDir {
		return nil
	}
	return root.RemoveAll(name)
}

func writeEntry(root *os.Root, name string, hdr *tar.Header, tr io.Reader, opts Options) (int64, error) {
	mode := fs.FileMode(hdr.Mode) & fs.ModePerm
	if err := replace(root, name, hdr.Typeflag == tar.TypeDir); err != nil {
		return 0, err
	}
	var size int64
	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := root.Mkdir(name, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return 0, err
		}
	case tar.TypeReg: // the tar reader reports the old TypeRegA as TypeReg
		if hdr.Size > opts.MaxFileSize {
			return 0, fmt.Errorf("file of %d bytes exceeds %d: %w", hdr.Size, opts.MaxFileSize, ErrTooLarge)
		}
		f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
		if err != nil {
			return 0, err
		}
		n, err := io.Copy(f, io.LimitReader(tr, hdr.Size))
		if err == nil && n != hdr.Size {
			err = io.ErrUnexpectedEOF
		}
		if err == nil {
			err = setMetaFd(f, hdr, mode, opts)
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return 0, err
		}
		size = n
		return size, root.Chtimes(name, hdr.ModTime, hdr.ModTime)
	case tar.TypeSymlink:
		// The link itself may point anywhere: it is stored, never followed
		// while unpacking (os.Root refuses to traverse it out of the root).
		if err := root.Symlink(hdr.Linkname, name); err != nil {
			return 0, err
		}
		if !opts.NoChown {
			if err := root.Lchown(name, hdr.Uid, hdr.Gid); err != nil {
				return 0, err
			}
		}
		return 0, nil
	case tar.TypeLink:
		target, err := cleanName(hdr.Linkname)
		if err != nil {
			return 0, fmt.Errorf("hardlink target %q: %w", hdr.Linkname, err)
		}
		if err := checkParents(root, target); err != nil {
			return 0, fmt.Errorf("hardlink target %q: %w", hdr.Linkname, err)
		}
		fi, err := root.Lstat(target)
		if err != nil {
			return 0, fmt.Errorf("hardlink target %q: %w", hdr.Linkname, err)
		}
		if fi.IsDir() {
			return 0, fmt.Errorf("hardlink to directory %q", hdr.Linkname)
		}
		if err := root.Link(target, name); err != nil {
			return 0, err
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			return 0, nil
		}
		// The link entry's owner and mode apply to the shared inode, as
		// containerd and docker apply them.
		return 0, applyMeta(root, name, hdr, opts)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		if !opts.AllowDevices {
			return 0, fmt.Errorf("device or fifo entries are not allowed")
		}
		if err := mknod(root, name, hdr); err != nil {
			return 0, err
		}
	case tar.TypeXGlobalHeader:
		return 0, nil
	default:
		return 0, fmt.Errorf("unsupported tar entry type %q", hdr.Typeflag)
	}
	return size, applyMeta(root, name, hdr, opts)
}

func mknod(root *os.Root, name string, hdr *tar.Header) error {
	dir, base := path.Split(name)
	if dir == "" {
		dir = "."
	}
	d, err := root.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	mode := uint32(hdr.Mode) & 0o7777
	switch hdr.Typeflag {
	case tar.TypeChar:
		mode |= unix.S_IFCHR
	case tar.TypeBlock:
		mode |= unix.S_IFBLK
	case tar.TypeFifo:
		mode |= unix.S_IFIFO
	}
	dev := unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
	return unix.Mknodat(int(d.Fd()), base, mode, int(dev))
}

// applyMeta sets ownership, mode, xattrs and times of a directory or special
// file through a descriptor opened without following symlinks.
func applyMeta(root *os.Root, name string, hdr *tar.Header, opts Options) error {
	flags := os.O_RDONLY | unix.O_NOFOLLOW
	if hdr.Typeflag == tar.TypeDir {
		flags |= unix.O_DIRECTORY
	} else {
		flags |= unix.O_PATH
	}
	f, err := root.OpenFile(name, flags, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if hdr.Typeflag == tar.TypeDir {
		return setMetaFd(f, hdr, fs.FileMode(hdr.Mode)&fs.ModePerm, opts)
	}
	// O_PATH descriptors refuse fchmod/fchown: go through /proc/self/fd.
	p := fmt.Sprintf("/proc/self/fd/%d", f.Fd())
	if !opts.NoChown {
		if err := os.Chown(p, hdr.Uid, hdr.Gid); err != nil {
			return err
		}
	}
	if err := unix.Chmod(p, uint32(hdr.Mode)&0o7777); err != nil {
		return err
	}
	return root.Chtimes(name, hdr.ModTime, hdr.ModTime)
}

func setMetaFd(f *os.File, hdr *tar.Header, mode fs.FileMode, opts Options) error {
	if !opts.NoChown {
		if err := f.Chown(hdr.Uid, hdr.Gid); err != nil {
			return err
		}
	}
	// chown clears set-id bits, so the mode comes after it.
	m := uint32(mode) | uint32(hdr.Mode)&(unix.S_ISUID|unix.S_ISGID|unix.S_ISVTX)
	if err := unix.Fchmod(int(f.Fd()), m); err != nil {
		return err
	}
	for k, v := range hdr.PAXRecords {
		const prefix = "SCHILY.xattr."
		if !strings.HasPrefix(k, prefix) {
			continue
		}
		if strings.HasPrefix(strings.TrimPrefix(k, prefix), overlayXattrPrefix) {
			return fmt.Errorf("xattr %s: overlayfs metadata is not a layer's to set: %w", strings.TrimPrefix(k, prefix), ErrUnsafePath)
		}
		if err := unix.Fsetxattr(int(f.Fd()), strings.TrimPrefix(k, prefix), []byte(v), 0); err != nil {
			if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EPERM) {
				continue // filesystem or privilege without this namespace
			}
			return fmt.Errorf("xattr %s: %w", strings.TrimPrefix(k, prefix), err)
		}
	}
	return nil
}
