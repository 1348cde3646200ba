package rootfs

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"

	"github.com/cocoon-containers/cocoon/rootfs/verity"
)

// LayerImage is a read-only filesystem image with its dm-verity hash tree
// appended: DataBlocks 4096-byte blocks of erofs, then veritysetup's
// superblock and the tree (no salt). The guest maps it with the data and
// hash device both the image, the tree starting at block DataBlocks+1, and
// RootHash from a source it trusts (the measured command line or the
// policy).
type LayerImage struct {
	Path       string
	RootHash   []byte
	DataBlocks uint64
	FSType     string
}

// HashOffset is the byte offset of the verity superblock in the image
// (veritysetup --hash-offset).
func (l *LayerImage) HashOffset() int64 { return int64(l.DataBlocks) * 4096 }

// BuildLayerImage packs the directory src into an erofs image at out with
// its verity tree appended. The same tree gives the same bytes: fixed
// UUID and timestamps, every file owned by root.
func BuildLayerImage(ctx context.Context, src, out string) (*LayerImage, error) {
	if st, err := os.Stat(src); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("layer image: %s is not a directory", src)
	}
	os.Remove(out)
	cmd := exec.CommandContext(ctx, "mkfs.erofs", "--quiet", "-T0", "-U"+defaultVerityUID, "--all-root", out, src)
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("mkfs.erofs: %w: %s", err, b)
	}
	f, err := os.OpenFile(out, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := st.Size()
	if rem := size % 4096; rem != 0 {
		size += 4096 - rem
		if err := f.Truncate(size); err != nil {
			return nil, err
		}
	}
	res, err := verity.Format(io.NewSectionReader(f, 0, size), size, io.NewOffsetWriter(f, size), verity.Params{})
	if err != nil {
		return nil, fmt.Errorf("layer image %s: %w", out, err)
	}
	if err := f.Sync(); err != nil {
		return nil, err
	}
	return &LayerImage{Path: out, RootHash: res.RootHash, DataBlocks: res.DataBlocks, FSType: "erofs"}, nil
}
