package rootfs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"

	"github.com/cocoon-containers/cocoon/image/unpack"
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
// its verity tree appended. Ownership, modes, xattrs and device nodes (an
// overlayfs whiteout is a 0:0 character device) are kept; the UUID and
// every timestamp are fixed, so the same tree gives the same bytes and
// the same root hash wherever it is built.
func BuildLayerImage(ctx context.Context, src, out string) (*LayerImage, error) {
	if st, err := os.Stat(src); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("layer image: %s is not a directory", src)
	}
	os.Remove(out)
	cmd := exec.CommandContext(ctx, "mkfs.erofs", "--quiet", "-T0", "-U"+defaultVerityUID, out, src)
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

// LayerImageFromTar unpacks one uncompressed OCI layer tar on its own, in
// the form containerd's overlay snapshotter stores a layer (whiteouts as
// overlayfs whiteouts; a directory the layer only implies copies its
// metadata from the same directory in parents, the lower layers' unpacked
// directories, top first), and packs it with BuildLayerImage. A snapshot
// containerd unpacked from the same tars packs to the same root hash,
// which is how a policy author predicts what the shim will send. The
// unpacked tree is left in dir, which must be empty or missing.
func LayerImageFromTar(ctx context.Context, r io.Reader, dir string, parents []string, out string) (*LayerImage, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	// A snapshotter's layer directory is 0755; so is the packed root.
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	// Device nodes are kept, as containerd keeps them, so the root hash
	// matches its snapshot; the guest mounts container roots nodev.
	if err := unpack.Layer(dir, r, unpack.Options{OverlayWhiteouts: true, AllowDevices: true, Parents: parents}); err != nil {
		return nil, fmt.Errorf("layer image: %w", err)
	}
	return BuildLayerImage(ctx, dir, out)
}

// ImageLayer is one layer of an image and its verity image.
type ImageLayer struct {
	DiffID string
	*LayerImage
}

// LayerImagesFromLayout builds the verity layer image of every layer of
// the image in the OCI image layout at layout (as skopeo copy oci:DIR or
// an unpacked ctr images export writes it), bottom layer first, into
// outDir. ref selects the image by its org.opencontainers.image.ref.name
// annotation when the layout holds several; empty takes the only one.
// Every layer's uncompressed bytes are checked against the config's
// diff_ids.
func LayerImagesFromLayout(ctx context.Context, layoutDir, ref, outDir string) ([]ImageLayer, error) {
	img, err := imageFromLayout(layoutDir, ref)
	if err != nil {
		return nil, err
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("image layers: %w", err)
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp(outDir, ".unpacked-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	var res []ImageLayer
	var parents []string // unpacked lower layers, top first
	for i, l := range layers {
		diffID, err := l.DiffID()
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
		rc, err := l.Uncompressed()
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
		h := sha256.New()
		dir := filepath.Join(work, strconv.Itoa(i))
		li, err := LayerImageFromTar(ctx, io.TeeReader(rc, h), dir, parents, filepath.Join(outDir, fmt.Sprintf("layer-%02d.img", i)))
		parents = append([]string{dir}, parents...)
		if err == nil {
			_, err = io.Copy(h, rc) // the tar's end padding is part of the digest
		}
		rc.Close()
		if err != nil {
			return nil, fmt.Errorf("layer %d (%s): %w", i, diffID, err)
		}
		if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != diffID.String() {
			return nil, fmt.Errorf("layer %d: uncompressed digest %s, the config says %s", i, got, diffID)
		}
		res = append(res, ImageLayer{DiffID: diffID.String(), LayerImage: li})
	}
	return res, nil
}

func imageFromLayout(dir, ref string) (v1.Image, error) {
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("OCI layout %s: %w", dir, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("OCI layout %s: %w", dir, err)
	}
	var picked []v1.Descriptor
	for _, d := range im.Manifests {
		if ref == "" || d.Annotations["org.opencontainers.image.ref.name"] == ref || d.Annotations["io.containerd.image.name"] == ref {
			picked = append(picked, d)
		}
	}
	if len(picked) != 1 {
		return nil, fmt.Errorf("OCI layout %s: %d images match %q, want exactly one", dir, len(picked), ref)
	}
	d := picked[0]
	if d.MediaType.IsIndex() {
		child, err := idx.ImageIndex(d.Digest)
		if err != nil {
			return nil, err
		}
		cm, err := child.IndexManifest()
		if err != nil {
			return nil, err
		}
		for _, m := range cm.Manifests {
			if m.Platform == nil || (m.Platform.OS == "linux" && m.Platform.Architecture == "amd64") {
				return child.Image(m.Digest)
			}
		}
		return nil, fmt.Errorf("OCI layout %s: no linux/amd64 image in %s", dir, d.Digest)
	}
	return idx.Image(d.Digest)
}
