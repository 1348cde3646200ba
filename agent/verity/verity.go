// Package verity mounts dm-verity protected filesystem images in the
// guest: the root filesystem image named on the measured command line, and
// container layers whose root hashes a request carries (and the policy
// allows). Every block read through the mount is checked against the root
// hash by the kernel; what the host changes in the image afterwards reads
// as an I/O error.
package verity

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"golang.org/x/sys/unix"

	"github.com/cocoon-containers/cocoon/agent/devmapper"
)

// Filesystems a verity image may hold.
var fsTypes = map[string]bool{"erofs": true, "ext4": true, "squashfs": true}

// Mount creates device-mapper device name over v and mounts it read-only
// at target (created if missing).
func Mount(ctx context.Context, log *slog.Logger, name string, v devmapper.Verity, fstype, target string) error {
	if log == nil {
		log = slog.Default()
	}
	if !fsTypes[fstype] {
		return fmt.Errorf("verity image filesystem %q: want erofs, ext4 or squashfs", fstype)
	}
	tg, err := v.Target()
	if err != nil {
		return err
	}
	dm, err := devmapper.Open()
	if err != nil {
		return err
	}
	defer dm.Close()
	dev, err := dm.Create(name, true, []devmapper.Target{tg})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(target, 0o755); err != nil {
		dm.Remove(name)
		return err
	}
	if err := unix.Mount(dev, target, fstype, unix.MS_RDONLY|unix.MS_NODEV|unix.MS_NOSUID, ""); err != nil {
		dm.Remove(name)
		return fmt.Errorf("mount verity device %s (%s) on %s: %w", dev, fstype, target, err)
	}
	log.InfoContext(ctx, "verity image mounted", "device", dev, "mount_point", target, "fstype", fstype)
	return nil
}

// Unmount undoes Mount.
func Unmount(ctx context.Context, name, target string) error {
	var errs []error
	if err := unix.Unmount(target, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		errs = append(errs, fmt.Errorf("unmount %s: %w", target, err))
	}
	dm, err := devmapper.Open()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	defer dm.Close()
	if ok, err := dm.Exists(name); err == nil && ok {
		if err := dm.Remove(name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
