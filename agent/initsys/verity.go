package initsys

import (
	"context"
	"log/slog"

	"github.com/cocoon-containers/cocoon/agent/devmapper"
	"github.com/cocoon-containers/cocoon/agent/verity"
)

// VerityRootfsMount is where the dm-verity protected root filesystem image
// is mounted, read-only.
const VerityRootfsMount = "/run/cocoon-rootfs"

// verityRootfsName is its device-mapper name.
const verityRootfsName = "cocoon-rootfs"

// MountVerityRootfs sets up dm-verity over the image (v: data on one disk,
// the veritysetup-format tree on another), checked against the root hash
// from the measured command line, and mounts it read-only at
// VerityRootfsMount.
func MountVerityRootfs(ctx context.Context, log *slog.Logger, v devmapper.Verity, fstype string) error {
	return verity.Mount(ctx, log, verityRootfsName, v, fstype, VerityRootfsMount)
}
