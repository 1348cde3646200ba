package verity

import (
	"context"
	"encoding/hex"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/cocoon-containers/cocoon/agent/devmapper"
	"github.com/cocoon-containers/cocoon/rpc/agentpb"
)

// Storage options of a dm-verity layer. The root hash option has the name
// Kata's integrity-protected layers use, so that a policy written for
// those (a list of allowed root hashes) reads ours the same way.
const (
	OptRootHash   = "io.katacontainers.fs-opt.root-hash="
	OptDataBlocks = "io.cocoon.fs-opt.verity-data-blocks="
)

var virtioDisk = regexp.MustCompile(`^/dev/vd[a-z]{1,3}$`)

// Layer is a parsed verity layer storage.
type Layer struct {
	Device     string
	RootHash   []byte
	DataBlocks uint64
	FSType     string
	MountPoint string
}

// IsLayer reports whether a storage asks for a dm-verity layer.
func IsLayer(s *agentpb.Storage) bool {
	for _, o := range s.GetOptions() {
		if strings.HasPrefix(o, OptRootHash) {
			return true
		}
	}
	return false
}

// ParseLayer checks a verity layer storage from the host: a whole virtio
// disk (/dev/vdX) holding the image with its tree appended, a sha256 root
// hash, the data block count, a read-only filesystem type. A wrong block
// count from the host cannot pass: the root hash covers the tree built
// over exactly that many blocks.
func ParseLayer(s *agentpb.Storage) (*Layer, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("verity layer %s: %s: %w", s.GetMountPoint(), fmt.Sprintf(format, args...), errdefs.ErrInvalidArgument)
	}
	l := &Layer{Device: s.GetSource(), FSType: s.GetFstype(), MountPoint: s.GetMountPoint()}
	if !virtioDisk.MatchString(l.Device) {
		return nil, bad("source %q: want a virtio disk /dev/vdX", l.Device)
	}
	if !fsTypes[l.FSType] {
		return nil, bad("fstype %q: want erofs, ext4 or squashfs", l.FSType)
	}
	for _, o := range s.GetOptions() {
		switch {
		case strings.HasPrefix(o, OptRootHash):
			b, err := hex.DecodeString(strings.TrimPrefix(o, OptRootHash))
			if err != nil || len(b) != 32 {
				return nil, bad("root hash: want 64 hex digits")
			}
			l.RootHash = b
		case strings.HasPrefix(o, OptDataBlocks):
			n, err := strconv.ParseUint(strings.TrimPrefix(o, OptDataBlocks), 10, 64)
			if err != nil || n == 0 || n > 1<<40 {
				return nil, bad("data blocks %q", strings.TrimPrefix(o, OptDataBlocks))
			}
			l.DataBlocks = n
		case o == "ro", o == "nodev", o == "nosuid", o == "noexec":
		default:
			return nil, bad("option %q not allowed", o)
		}
	}
	if l.RootHash == nil || l.DataBlocks == 0 {
		return nil, bad("needs %s and %s", strings.TrimSuffix(OptRootHash, "="), strings.TrimSuffix(OptDataBlocks, "="))
	}
	return l, nil
}

// DeviceName is the device-mapper name of the layer.
func (l *Layer) DeviceName() string { return "layer-" + hex.EncodeToString(l.RootHash[:12]) }

// Mount maps the layer through dm-verity and mounts it read-only at its
// mount point.
func (l *Layer) Mount(ctx context.Context, log *slog.Logger) error {
	v := devmapper.Verity{DataDevice: l.Device, HashDevice: l.Device, DataBlocks: l.DataBlocks,
		HashStartBlock: l.DataBlocks + 1, RootHash: l.RootHash}
	return Mount(ctx, log, l.DeviceName(), v, l.FSType, l.MountPoint)
}

// Unmount undoes Mount.
func (l *Layer) Unmount(ctx context.Context) error { return Unmount(ctx, l.DeviceName(), l.MountPoint) }
