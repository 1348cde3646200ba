// Package kernel fetches and unpacks guest kernels: Debian linux-image
// packages (.deb, fetched with apt-get download) and Azure Linux kernel RPMs.
package kernel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// Kernel is an unpacked kernel package.
type Kernel struct {
	Version    string // e.g. 6.1.0-57-amd64
	Vmlinuz    string // path to the bootable image
	Config     string // path to the build config (may be empty)
	ModulesDir string // lib/modules/<version>
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
	return UnpackDeb(ctx, debs[len(debs)-1], filepath.Join(cacheDir, real), progress)
}

// UnpackDeb extracts a kernel .deb into dir (reused when already there).
func UnpackDeb(ctx context.Context, deb, dir string, progress io.Writer) (*Kernel, error) {
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
// tree (boot/vmlinuz-<v>, boot/config-<v>, lib/modules/<v>; usr/lib/modules
// is accepted too).
func Find(root string) (*Kernel, error) {
	var modRoot string
	for _, c := range []string{"lib/modules", "usr/lib/modules"} {
		if st, err := os.Stat(filepath.Join(root, c)); err == nil && st.IsDir() {
			modRoot = filepath.Join(root, c)
			break
		}
	}
	if modRoot == "" {
		return nil, fmt.Errorf("no lib/modules in %s", root)
	}
	ents, err := os.ReadDir(modRoot)
	if err != nil || len(ents) == 0 {
		return nil, fmt.Errorf("no kernel version under %s", modRoot)
	}
	if len(ents) > 1 {
		return nil, fmt.Errorf("several kernel versions under %s", modRoot)
	}
	v := ents[0].Name()
	k := &Kernel{Version: v, ModulesDir: filepath.Join(modRoot, v)}
	for _, c := range []string{filepath.Join(root, "boot/vmlinuz-"+v), filepath.Join(root, "boot/vmlinuz"), filepath.Join(modRoot, v, "vmlinuz")} {
		if _, err := os.Stat(c); err == nil {
			k.Vmlinuz = c
			break
		}
	}
	if k.Vmlinuz == "" {
		return nil, fmt.Errorf("no vmlinuz for kernel %s in %s", v, root)
	}
	for _, c := range []string{filepath.Join(root, "boot/config-"+v), filepath.Join(modRoot, v, "config")} {
		if _, err := os.Stat(c); err == nil {
			k.Config = c
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

// UnpackRPM extracts an Azure Linux (or other RPM-based) kernel package into
// dir with rpm2cpio and cpio (Debian packages rpm2cpio and cpio).
func UnpackRPM(ctx context.Context, rpm, dir string, progress io.Writer) (*Kernel, error) {
	if k, err := Find(dir); err == nil {
		k.Package = rpm
		return k, nil
	}
	if progress != nil {
		fmt.Fprintf(progress, "unpacking %s\n", filepath.Base(rpm))
	}
	tmp := dir + ".tmp"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return nil, err
	}
	r2c := exec.CommandContext(ctx, "rpm2cpio", rpm)
	cp := exec.CommandContext(ctx, "cpio", "-i", "-d", "-m", "--quiet", "--no-absolute-filenames")
	cp.Dir = tmp
	pipe, err := r2c.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cp.Stdin = pipe
	var errb strings.Builder
	r2c.Stderr, cp.Stderr = &errb, &errb
	if err := r2c.Start(); err != nil {
		os.RemoveAll(tmp)
		return nil, fmt.Errorf("rpm2cpio %s: %w", rpm, err)
	}
	cerr := cp.Run()
	rerr := r2c.Wait()
	if cerr != nil || rerr != nil {
		os.RemoveAll(tmp)
		return nil, fmt.Errorf("unpack %s: %v %v: %s", rpm, rerr, cerr, errb.String())
	}
	os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		return nil, err
	}
	k, err := Find(dir)
	if err != nil {
		return nil, err
	}
	k.Package = rpm
	return k, nil
}
