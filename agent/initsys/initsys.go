// Package initsys does what the agent must do as PID 1 of the guest VM
// before it serves: mount the pseudo filesystems, move from the initramfs
// onto a tmpfs root (pivot_root does not work on an initramfs, and
// containers need it), load the kernel modules the initrd carries, bring up
// loopback, and later reap orphans and power the machine off.
//
// On the initramfs, Setup copies the root onto a tmpfs (all but the
// running agent binary, which stays mapped), frees the initramfs and
// chroots into the tmpfs, in the same process.
package initsys

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Defaults.
const (
	DefaultModulesLoad = "/etc/cocoon/modules.load"
	DefaultNewRoot     = "/.cocoon-root"
	// CgroupControllers are enabled at the root of the cgroup v2 tree so
	// that libcontainer can delegate them to containers.
	CgroupControllers = "cpuset cpu io memory hugetlb pids rdma misc"
)

// Config configures Setup.
type Config struct {
	// ModulesLoad lists the modules to load (DefaultModulesLoad).
	ModulesLoad string
	// NewRoot is where the tmpfs root is assembled (DefaultNewRoot).
	NewRoot string
	Logger  *slog.Logger
}

func (c *Config) defaults() {
	if c.ModulesLoad == "" {
		c.ModulesLoad = DefaultModulesLoad
	}
	if c.NewRoot == "" {
		c.NewRoot = DefaultNewRoot
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// mount is one filesystem Setup mounts.
type mount struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
	mode                   os.FileMode
}

// earlyMounts come first: /proc/cmdline and /dev/console need them.
var earlyMounts = []mount{
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", 0o555},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", 0o555},
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755", 0o755},
}

// lateMounts are done on the final root.
var lateMounts = []mount{
	{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5", 0o755},
	{"shm", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777", 0o1777},
	{"mqueue", "/dev/mqueue", "mqueue", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", 0o755},
	{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755", 0o755},
	{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777", 0o1777},
	{"cgroup2", "/sys/fs/cgroup", "cgroup2", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "nsdelegate", 0o555},
}

// devLinks are the /dev symlinks devtmpfs does not make.
var devLinks = [][2]string{
	{"/proc/self/fd", "/dev/fd"},
	{"/proc/self/fd/0", "/dev/stdin"},
	{"/proc/self/fd/1", "/dev/stdout"},
	{"/proc/self/fd/2", "/dev/stderr"},
	{"/proc/kcore", "/dev/core"},
}

// Setup prepares the VM. Calling it again (on the tmpfs root) mounts
// nothing twice.
func Setup(ctx context.Context, cfg Config) error {
	cfg.defaults()
	log := cfg.Logger
	start := time.Now()
	for _, m := range earlyMounts {
		if err := mountOnce(m); err != nil {
			return err
		}
	}
	if err := attachConsole("/dev/console"); err != nil {
		// Logging still goes to whatever stderr is.
		log.WarnContext(ctx, "no console", "error", err)
	}
	onInitramfs, err := rootIsInitramfs("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	if onInitramfs {
		// The running binary is not copied: it stays mapped (and
		// reachable as /proc/self/exe for container processes) after
		// its initramfs file is gone, and copying and re-executing tens
		// of megabytes would double the agent's start-up time.
		self, err := os.Executable()
		if err != nil {
			return fmt.Errorf("switch root: %w", err)
		}
		if err := switchRoot(cfg.NewRoot, self); err != nil {
			return fmt.Errorf("switch root: %w", err)
		}
		log.InfoContext(ctx, "moved from the initramfs to a tmpfs root", "took", time.Since(start).Round(time.Millisecond), "uptime", Uptime())
	}
	for _, m := range lateMounts {
		if err := mountOnce(m); err != nil {
			return err
		}
	}
	for _, l := range devLinks {
		if err := os.Symlink(l[0], l[1]); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("symlink %s: %w", l[1], err)
		}
	}
	if err := enableControllers("/sys/fs/cgroup"); err != nil {
		log.WarnContext(ctx, "cgroup controllers", "error", err)
	}
	loaded, errs := LoadModules(cfg.ModulesLoad, kernelLoader{})
	for _, e := range errs {
		log.WarnContext(ctx, "kernel module", "error", e)
	}
	if err := loopbackUp(); err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	log.InfoContext(ctx, "guest set up", "modules", loaded, "took", time.Since(start).Round(time.Millisecond), "uptime", Uptime())
	return nil
}

// Uptime is the time since the kernel booted, for boot-time logs.
func Uptime() time.Duration {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	d, err := time.ParseDuration(f[0] + "s")
	if err != nil {
		return 0
	}
	return d
}

// mountOnce mounts m unless its target is already a mount point.
func mountOnce(m mount) error {
	if err := os.MkdirAll(m.target, m.mode); err != nil {
		return fmt.Errorf("mount %s: %w", m.target, err)
	}
	mounted, err := isMountPoint(m.target)
	if err != nil {
		return fmt.Errorf("mount %s: %w", m.target, err)
	}
	if mounted {
		return nil
	}
	if err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data); err != nil {
		return fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err)
	}
	return nil
}

// isMountPoint reports whether p sits on another device than its parent.
func isMountPoint(p string) (bool, error) {
	var st, parent unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return false, err
	}
	if err := unix.Lstat(filepath.Dir(p), &parent); err != nil {
		return false, err
	}
	return st.Dev != parent.Dev || st.Ino == parent.Ino, nil
}

// attachConsole makes the console the agent's stdin, stdout and stderr.
func attachConsole(p string) error {
	fd, err := unix.Open(p, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	for i := 0; i < 3; i++ {
		if err := unix.Dup3(fd, i, 0); err != nil {
			return err
		}
	}
	return nil
}

// rootIsInitramfs reports whether the topmost mount on / is the kernel's
// initramfs ("rootfs").
func rootIsInitramfs(mountinfo string) (bool, error) {
	f, err := os.Open(mountinfo)
	if err != nil {
		return false, err
	}
	defer f.Close()
	return parseRootFSType(f)
}

func parseRootFSType(r io.Reader) (bool, error) {
	fstype := ""
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for s.Scan() {
		pre, post, ok := strings.Cut(s.Text(), " - ")
		f := strings.Fields(pre)
		if !ok || len(f) < 5 {
			continue
		}
		if f[4] != "/" {
			continue
		}
		if pf := strings.Fields(post); len(pf) > 0 {
			fstype = pf[0]
		}
	}
	if err := s.Err(); err != nil {
		return false, err
	}
	if fstype == "" {
		return false, errors.New("mountinfo lists no root mount")
	}
	return fstype == "rootfs", nil
}

// enableControllers turns on every available controller from
// CgroupControllers in the root's subtree_control, one at a time so that
// one the kernel refuses does not take the others with it.
func enableControllers(root string) error {
	b, err := os.ReadFile(filepath.Join(root, "cgroup.controllers"))
	if err != nil {
		return err
	}
	avail := map[string]bool{}
	for _, c := range strings.Fields(string(b)) {
		avail[c] = true
	}
	var errs []error
	for _, c := range strings.Fields(CgroupControllers) {
		if !avail[c] {
			continue
		}
		if err := os.WriteFile(filepath.Join(root, "cgroup.subtree_control"), []byte("+"+c), 0); err != nil {
			errs = append(errs, fmt.Errorf("enable %s: %w", c, err))
		}
	}
	return errors.Join(errs...)
}

func loopbackUp() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return err
	}
	return netlink.LinkSetUp(lo)
}

// PowerOff flushes the filesystems and powers the VM off. It returns only
// if the kernel refused.
func PowerOff(ctx context.Context, log *slog.Logger) error {
	if log == nil {
		log = slog.Default()
	}
	log.InfoContext(ctx, "powering off")
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		return fmt.Errorf("power off: %w", err)
	}
	return nil
}
