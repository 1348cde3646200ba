// Package kernel fetches and unpacks guest kernels: Debian linux-image
// packages (.deb, fetched with apt-get download and unpacked with
// dpkg-deb) and Azure Linux kernel RPMs (read in Go).
package kernel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"

	"github.com/cocoon-containers/cocoon/rootfs/cpio"
	"github.com/cocoon-containers/cocoon/rootfs/rpm"
)

// Kernel is an unpacked kernel package.
type Kernel struct {
	Version    string // e.g. 6.1.0-57-amd64
	Vmlinuz    string // path to the bootable image
	Config     string // path to the build config (empty when the package has none)
	ModulesDir string // lib/modules/<version>; empty when the kernel ships no modules
	Package    string // the package file it came from
}

// DefaultPackage is Debian's kernel metapackage for amd64.
const DefaultPackage = "linux-image-amd64"

var debName = regexp.MustCompile(`^linux-image-[0-9][A-Za-z0-9.+~-]*$`)

// ResolveDebian maps a metapackage such as linux-image-amd64 to the real
// versioned package it depends on; a versioned name is returned unchanged.
func ResolveDebian(ctx context.Context, pkg string) (string, error) {
	if debName.MatchString(pkg) {
		return pkg, nil
	}
	out, err := exec.CommandContext(ctx, "apt-cache", "depends", pkg).Output()
	if err != nil {
		return "", fmt.Errorf("apt-cache depends %s: %w (run apt-get update first)", pkg, err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		l = strings.TrimSpace(l)
		if dep, ok := strings.CutPrefix(l, "Depends: "); ok && debName.MatchString(dep) {
			return dep, nil
		}
	}
	return "", fmt.Errorf("package %s depends on no linux-image-<version> package", pkg)
}

// FetchDebian downloads pkg (a metapackage or a versioned linux-image
// package) into cacheDir with apt-get download, once, and unpacks it.
func FetchDebian(ctx context.Context, cacheDir, pkg string, progress io.Writer) (*Kernel, error) {
	real, err := ResolveDebian(ctx, pkg)
	if err != nil {
		// A fresh machine may have no package lists yet.
		if out, uerr := exec.CommandContext(ctx, "apt-get", "update", "-qq").CombinedOutput(); uerr != nil {
			return nil, fmt.Errorf("%w (apt-get update: %v: %s)", err, uerr, strings.TrimSpace(string(out)))
		}
		if real, err = ResolveDebian(ctx, pkg); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return nil, err
	}
	unlock, err := lockCache(cacheDir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	debs, _ := filepath.Glob(filepath.Join(cacheDir, real+"_*.deb"))
	if len(debs) == 0 {
		if progress != nil {
			fmt.Fprintf(progress, "downloading %s\n", real)
		}
		cmd := exec.CommandContext(ctx, "apt-get", "download", "-q", real)
		cmd.Dir = cacheDir
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("apt-get download %s: %w: %s", real, err, strings.TrimSpace(string(out)))
		}
		debs, _ = filepath.Glob(filepath.Join(cacheDir, real+"_*.deb"))
		if len(debs) == 0 {
			return nil, fmt.Errorf("apt-get download %s left no .deb in %s", real, cacheDir)
		}
	}
	sort.Strings(debs)
	return unpackDeb(ctx, debs[len(debs)-1], filepath.Join(cacheDir, real), progress)
}

// lockCache serializes downloads and unpacking in one cache directory
// between processes (test binaries of several packages run at once).
func lockCache(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, ".cocoon-kernel.lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock kernel cache: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock kernel cache: %w", err)
	}
	return func() { f.Close() }, nil
}

// lockParent locks the cache directory that will hold dir.
func lockParent(dir string) (func(), error) {
	parent := filepath.Dir(dir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return nil, err
	}
	return lockCache(parent)
}

// UnpackDeb extracts a kernel .deb into dir (reused when already there).
func UnpackDeb(ctx context.Context, deb, dir string, progress io.Writer) (*Kernel, error) {
	unlock, err := lockParent(dir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	return unpackDeb(ctx, deb, dir, progress)
}

func unpackDeb(ctx context.Context, deb, dir string, progress io.Writer) (*Kernel, error) {
	if k, err := Find(dir); err == nil {
		k.Package = deb
		return k, nil
	}
	if progress != nil {
		fmt.Fprintf(progress, "unpacking %s\n", filepath.Base(deb))
	}
	tmp := dir + ".tmp"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return nil, err
	}
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", deb, tmp).CombinedOutput(); err != nil {
		os.RemoveAll(tmp)
		return nil, fmt.Errorf("dpkg-deb -x %s: %w: %s", deb, err, out)
	}
	os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		return nil, err
	}
	k, err := Find(dir)
	if err != nil {
		return nil, err
	}
	k.Package = deb
	return k, nil
}

// Find locates the kernel image, config and modules in an unpacked package
// tree. It knows Debian's layout (boot/vmlinuz-<v>, boot/config-<v>,
// lib/modules/<v>), Fedora's and Azure Linux's (lib/modules/<v>/vmlinuz,
// usr/lib/modules) and Azure Linux's kernel-uvm (usr/share/cloud-hypervisor/
// bzImage, everything built in, no modules). Paths are resolved inside root:
// a symlink that leads out of the tree counts as missing.
func Find(root string) (*Kernel, error) {
	r, err := os.OpenRoot(root)
	if err != nil {
		return nil, fmt.Errorf("open kernel tree: %w", err)
	}
	defer r.Close()
	isFile := func(rel string) bool {
		st, err := r.Stat(rel)
		return err == nil && st.Mode().IsRegular()
	}
	isDir := func(rel string) bool {
		st, err := r.Stat(rel)
		return err == nil && st.IsDir()
	}
	k := &Kernel{}
	for _, base := range []string{"lib/modules", "usr/lib/modules"} {
		ents, err := fs.ReadDir(r.FS(), base)
		if err != nil {
			continue
		}
		var versions []string
		for _, e := range ents {
			v := path.Join(base, e.Name())
			// A version directory holds modules; kernel-uvm's
			// lib/modules/kernel-uvm/vmlinux alone does not count.
			if e.IsDir() && (isDir(path.Join(v, "kernel")) || isFile(path.Join(v, "modules.builtin")) || isFile(path.Join(v, "modules.dep"))) {
				versions = append(versions, e.Name())
			}
		}
		if len(versions) > 1 {
			return nil, fmt.Errorf("several kernel versions under %s: %s", filepath.Join(root, base), strings.Join(versions, ", "))
		}
		if len(versions) == 1 {
			k.Version = versions[0]
			k.ModulesDir = filepath.Join(root, base, versions[0])
			break
		}
	}
	single := func(pattern string) string {
		m, _ := fs.Glob(r.FS(), pattern)
		var files []string
		for _, f := range m {
			if isFile(f) {
				files = append(files, f)
			}
		}
		if len(files) == 1 {
			return files[0]
		}
		return ""
	}
	var images []string
	if k.Version != "" {
		images = append(images, "boot/vmlinuz-"+k.Version, path.Join(strings.TrimPrefix(k.ModulesDir, root+"/"), "vmlinuz"))
	}
	images = append(images, single("boot/vmlinuz-*"), "usr/share/cloud-hypervisor/bzImage", "boot/vmlinuz")
	for _, c := range images {
		if c != "" && isFile(c) {
			k.Vmlinuz = filepath.Join(root, c)
			break
		}
	}
	if k.Vmlinuz == "" {
		return nil, fmt.Errorf("no kernel image (boot/vmlinuz-*, lib/modules/<version>/vmlinuz, usr/share/cloud-hypervisor/bzImage) in %s", root)
	}
	if k.Version == "" {
		k.Version = strings.TrimPrefix(filepath.Base(k.Vmlinuz), "vmlinuz-")
		if k.Version == filepath.Base(k.Vmlinuz) {
			k.Version = ""
		}
	}
	var configs []string
	if k.Version != "" {
		configs = append(configs, "boot/config-"+k.Version, "usr/src/linux-headers-"+k.Version+"/.config")
		if k.ModulesDir != "" {
			configs = append(configs, path.Join(strings.TrimPrefix(k.ModulesDir, root+"/"), "config"))
		}
	}
	configs = append(configs, single("boot/config-*"))
	for _, c := range configs {
		if c != "" && isFile(c) {
			k.Config = filepath.Join(root, c)
			break
		}
	}
	return k, nil
}

// ErrMissingConfig reports kernel options the guest needs that the kernel lacks.
var ErrMissingConfig = errors.New("kernel lacks required options")

// CheckConfig reads a kernel config and fails if an option is neither y nor m.
func CheckConfig(configPath string, options []string) error {
	b, err := os.ReadFile(configPath)
	if err != nil {
		return fmt.Errorf("read kernel config: %w", err)
	}
	set := map[string]bool{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok && (v == "y" || v == "m") {
			set[k] = true
		}
	}
	var missing []string
	for _, o := range options {
		if !set[o] {
			missing = append(missing, o)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: %s", ErrMissingConfig, strings.Join(missing, ", "))
	}
	return nil
}

// UnpackRPM extracts an Azure Linux (or other RPM-based) kernel package
// into dir (reused when already there) with the Go RPM and cpio readers: no
// rpm tools are needed, and nothing in the package can write outside dir.
func UnpackRPM(ctx context.Context, pkg, dir string, progress io.Writer) (*Kernel, error) {
	f, err := os.Open(pkg)
	if err != nil {
		return nil, fmt.Errorf("open kernel package: %w", err)
	}
	defer f.Close()
	p, err := rpm.Open(f)
	if err != nil {
		return nil, fmt.Errorf("kernel package %s: %w", pkg, err)
	}
	unlock, err := lockParent(dir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	found := func() (*Kernel, error) {
		k, err := Find(dir)
		if err != nil {
			return nil, err
		}
		k.Package = pkg
		if k.Version == "" {
			k.Version = p.Version + "-" + p.Release
		}
		return k, nil
	}
	if k, err := found(); err == nil {
		return k, nil
	}
	if progress != nil {
		fmt.Fprintf(progress, "unpacking %s\n", filepath.Base(pkg))
	}
	payload, err := p.Payload()
	if err != nil {
		return nil, fmt.Errorf("kernel package %s: %w", pkg, err)
	}
	defer payload.Close()
	tmp := dir + ".tmp"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return nil, err
	}
	if err := cpio.Extract(ctxReader{ctx, payload}, tmp); err != nil {
		os.RemoveAll(tmp)
		return nil, fmt.Errorf("unpack %s: %w", pkg, err)
	}
	os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		return nil, err
	}
	k, err := found()
	if err != nil {
		return nil, fmt.Errorf("kernel package %s-%s-%s: %w", p.Name, p.Version, p.Release, err)
	}
	return k, nil
}

// ctxReader stops a long extraction when ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(b []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(b)
}
