// Package agenttest helps tests drive the agent: a busybox root filesystem
// laid out like a shared-directory container rootfs, OCI specs for it, and
// the root-only test gate.
package agenttest

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cocoon-containers/cocoon/rpc/agentpb"
)

// Busybox is Debian busybox-static's binary.
const Busybox = "/bin/busybox"

// SharedContainersDir is where shared-directory container rootfs appear in
// the guest: <dir>/<bundle-id>/rootfs.
const SharedContainersDir = "/run/kata-containers/shared/containers"

// RequireRoot skips the test when it cannot create containers: not root,
// or a -short run.
func RequireRoot(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("creates containers; skipped in -short runs")
	}
	if os.Geteuid() != 0 {
		t.Skip("creates containers; needs root")
	}
}

// BusyboxRootfs builds a busybox root filesystem under
// dir/<bundleID>/rootfs (dir plays the guest's shared containers
// directory) and returns its path.
func BusyboxRootfs(t testing.TB, dir, bundleID string) string {
	t.Helper()
	root := filepath.Join(dir, bundleID, "rootfs")
	if err := MakeBusyboxRootfs(root); err != nil {
		t.Fatal(err)
	}
	return root
}

// MakeBusyboxRootfs writes a busybox root filesystem at root.
func MakeBusyboxRootfs(root string) error {
	for _, d := range []string{"bin", "proc", "sys", "dev", "tmp", "etc", "root"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return fmt.Errorf("busybox rootfs: %w", err)
		}
	}
	if err := copyFile(Busybox, filepath.Join(root, "bin/busybox"), 0o755); err != nil {
		return fmt.Errorf("busybox rootfs: %w", err)
	}
	out, err := exec.Command(Busybox, "--list").Output()
	if err != nil {
		return fmt.Errorf("busybox rootfs: list applets (install busybox-static): %w", err)
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet == "busybox" || strings.ContainsAny(applet, "/.") {
			continue
		}
		if err := os.Symlink("busybox", filepath.Join(root, "bin", applet)); err != nil && !os.IsExist(err) {
			return fmt.Errorf("busybox rootfs: %w", err)
		}
	}
	files := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
		"etc/group":  "root:x:0:\nnogroup:x:65534:\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(root, name), []byte(content), 0o644); err != nil {
			return fmt.Errorf("busybox rootfs: %w", err)
		}
	}
	return nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

var defaultCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
	"CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
	"CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

// Spec returns an OCI spec in the shape the Kata runtime sends for a
// container running args in rootfs.
func Spec(rootfs string, args ...string) *agentpb.Spec {
	caps := &agentpb.LinuxCapabilities{Bounding: defaultCaps, Effective: defaultCaps, Permitted: defaultCaps}
	return &agentpb.Spec{
		Version: "1.1.0",
		Process: &agentpb.Process{
			Args:         args,
			Env:          []string{"PATH=/bin", "HOME=/root"},
			Cwd:          "/",
			User:         &agentpb.User{},
			Capabilities: caps,
			Rlimits:      []*agentpb.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
		},
		Root:     &agentpb.Root{Path: rootfs},
		Hostname: "cocoon-test",
		Mounts: []*agentpb.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		},
		Linux: &agentpb.Linux{
			Resources: &agentpb.LinuxResources{
				Devices: []*agentpb.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
			},
			Namespaces: []*agentpb.LinuxNamespace{
				{Type: "pid"}, {Type: "ipc"}, {Type: "uts"}, {Type: "mount"}, {Type: "network", Path: "/var/run/netns/host-chosen"},
			},
			MaskedPaths:   []string{"/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"},
			ReadonlyPaths: []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
		},
	}
}
