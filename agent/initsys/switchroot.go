package initsys

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// pseudoMounts move along to the new root.
var pseudoMounts = []string{"/proc", "/sys", "/dev"}

// switchRoot copies the initramfs, except the files in leave, onto a tmpfs
// at newRoot, moves the pseudo filesystems there, frees the initramfs and
// makes newRoot the root of the mount namespace and of this process, as
// switch_root(8) does.
func switchRoot(newRoot string, leave ...string) error {
	if err := os.MkdirAll(newRoot, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("tmpfs", newRoot, "tmpfs", 0, "mode=0755"); err != nil {
		return fmt.Errorf("mount tmpfs on %s: %w", newRoot, err)
	}
	skip := map[string]bool{newRoot: true}
	for _, m := range pseudoMounts {
		skip[m] = true
	}
	left := map[string]bool{}
	for _, p := range leave {
		left[p] = true
	}
	if err := copyTree("/", newRoot, skip, left); err != nil {
		return err
	}
	for _, m := range pseudoMounts {
		dst := filepath.Join(newRoot, m)
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(m, dst, "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("move %s: %w", m, err)
		}
	}
	// The initramfs keeps its files in memory until they are deleted.
	if err := removeTree("/", skip); err != nil {
		return err
	}
	if err := unix.Chdir(newRoot); err != nil {
		return err
	}
	if err := unix.Mount(newRoot, "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move %s to /: %w", newRoot, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	return unix.Chdir("/")
}

// copyTree copies the directories, regular files and symlinks under src to
// dst with their modes and owners, staying on src's filesystem. Paths in
// skip (absolute, under src) are created as empty directories and not
// descended into; files in leave are not copied. Device nodes, fifos and
// sockets are left out.
func copyTree(src, dst string, skip, leave map[string]bool) error {
	var rootSt unix.Stat_t
	if err := unix.Lstat(src, &rootSt); err != nil {
		return err
	}
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		if d.IsDir() && (skip[p] || st.Dev != rootSt.Dev) {
			if p == dst {
				return filepath.SkipDir
			}
			if err := os.MkdirAll(target, 0o755); err != nil {
				return err
			}
			return filepath.SkipDir
		}
		mode := st.Mode & 0o7777
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			if rel != "." {
				if err := os.Mkdir(target, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
					return err
				}
			}
		case unix.S_IFREG:
			if leave[p] {
				return nil
			}
			if err := copyFile(p, target); err != nil {
				return err
			}
		case unix.S_IFLNK:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if err := os.Symlink(link, target); err != nil {
				return err
			}
			return os.Lchown(target, int(st.Uid), int(st.Gid))
		default:
			return nil
		}
		if err := os.Lchown(target, int(st.Uid), int(st.Gid)); err != nil {
			return err
		}
		// After chown, which clears set-id bits; raw bits, not os.FileMode.
		return unix.Chmod(target, mode)
	})
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return out.Close()
}

// removeTree deletes what copyTree copied: everything under root on root's
// filesystem except the paths in skip. Mount points are not crossed.
func removeTree(root string, skip map[string]bool) error {
	var rootSt unix.Stat_t
	if err := unix.Lstat(root, &rootSt); err != nil {
		return err
	}
	var rm func(dir string) error
	rm = func(dir string) error {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		var errs []error
		for _, e := range entries {
			p := filepath.Join(dir, e.Name())
			if skip[p] {
				continue
			}
			var st unix.Stat_t
			if err := unix.Lstat(p, &st); err != nil {
				errs = append(errs, err)
				continue
			}
			if st.Dev != rootSt.Dev {
				continue
			}
			if st.Mode&unix.S_IFMT == unix.S_IFDIR {
				if err := rm(p); err != nil {
					errs = append(errs, err)
					continue
				}
				if err := unix.Rmdir(p); err != nil && !errors.Is(err, unix.EBUSY) {
					errs = append(errs, fmt.Errorf("remove %s: %w", p, err))
				}
				continue
			}
			if err := unix.Unlink(p); err != nil {
				errs = append(errs, fmt.Errorf("remove %s: %w", p, err))
			}
		}
		return errors.Join(errs...)
	}
	return rm(root)
}
