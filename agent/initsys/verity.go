package initsys

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"golang.org/x/sys/unix"

	"github.com/cocoon-containers/cocoon/agent/devmapper"
)

// VerityRootfsMount is where the dm-verity protected root filesystem image
// is mounted, read-only.
const VerityRootfsMount = "/run/cocoon-rootfs"

// verityRootfsName is its device-mapper name.
const verityRootfsName = "cocoon-rootfs"

// MountVerityRootfs sets up dm-verity over the image on dataDev with the
// hash tree on hashDev, checked against rootHash from the measured command
// line, and mounts it read-only at VerityRootfsMount. Every block read
// afterwards is verified by the kernel; a mismatch is an I/O error.
func MountVerityRootfs(ctx context.Context, log *slog.Logger, v devmapper.Verity, fstype string) error {
	if log == nil {
		log = slog.Default()
	}
	tg, err := v.Target()
	if err != nil {
		return fmt.Errorf("verity rootfs: %w", err)
	}
	dm, err := devmapper.Open()
	if err != nil {
		return fmt.Errorf("verity rootfs: %w", err)
	}
	defer dm.Close()
	dev, err := dm.Create(verityRootfsName, true, []devmapper.Target{tg})
	if err != nil {
		return fmt.Errorf("verity rootfs: %w", err)
	}
	if err := os.MkdirAll(VerityRootfsMount, 0o755); err != nil {
		dm.Remove(verityRootfsName)
		return err
	}
	if err := unix.Mount(dev, VerityRootfsMount, fstype, unix.MS_RDONLY|unix.MS_NODEV|unix.MS_NOSUID, ""); err != nil {
		dm.Remove(verityRootfsName)
		return fmt.Errorf("verity rootfs: mount %s (%s): %w", dev, fstype, err)
	}
	log.InfoContext(ctx, "verity rootfs mounted", "device", dev, "mount_point", VerityRootfsMount, "fstype", fstype)
	return nil
}
