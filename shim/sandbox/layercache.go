package sandbox

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cocoon-containers/cocoon/rootfs"
	"github.com/cocoon-containers/cocoon/shim/config"
)

// LayerCacheDir is where, under the configured state directory, verity
// images of committed snapshot layers are kept for every pod to reuse,
// unless the configuration names another directory.
const LayerCacheDir = ".layers"

// layerCache holds the verity images of image layers. A layer is a
// committed snapshot directory, which containerd never changes: its image
// is keyed by the directory's path, device, inode and change time, built
// once, and attached read-only to every VM that needs it. An entry whose
// directory is gone (containerd removed the snapshot) is dropped the next
// time the cache is used. Nothing in it is trusted by the guest: each
// image is mapped against the root hash the policy lists.
type layerCache struct{ dir string }

// cacheEntry is the metadata file next to an image.
type cacheEntry struct {
	Source     string `json:"source"`
	RootHash   string `json:"root_hash"`
	DataBlocks uint64 `json:"data_blocks"`
	FSType     string `json:"fstype"`
}

func newLayerCache(sc config.Sandbox) (*layerCache, error) {
	dir := sc.LayerCacheDir
	if dir == "" {
		dir = filepath.Join(sc.StateDir, LayerCacheDir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("layer cache: %w", err)
	}
	return &layerCache{dir: dir}, nil
}

// key names src's current identity.
func cacheKey(src string) (string, error) {
	var st unix.Stat_t
	if err := unix.Lstat(src, &st); err != nil {
		return "", err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return "", fmt.Errorf("layer %s is not a directory", src)
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%d\x00%d\x00%d.%d", src, st.Dev, st.Ino, st.Ctim.Sec, st.Ctim.Nsec)
	return hex.EncodeToString(h.Sum(nil))[:32], nil
}

// get returns src's layer image, building it when the cache has none.
func (c *layerCache) get(ctx context.Context, src string) (*rootfs.LayerImage, bool, error) {
	key, err := cacheKey(src)
	if err != nil {
		return nil, false, err
	}
	img, meta := filepath.Join(c.dir, key+".img"), filepath.Join(c.dir, key+".json")
	if l, err := c.load(img, meta, src); err == nil {
		return l, true, nil
	}
	// Build under a private name, then publish: the image first, the
	// metadata (which marks the entry complete) last. Two shims building
	// the same layer at once both publish the same bytes.
	tmp, err := os.MkdirTemp(c.dir, ".build-")
	if err != nil {
		return nil, false, err
	}
	defer os.RemoveAll(tmp)
	l, err := rootfs.BuildLayerImage(ctx, src, filepath.Join(tmp, "layer.img"))
	if err != nil {
		return nil, false, err
	}
	b, err := json.Marshal(cacheEntry{Source: src, RootHash: hex.EncodeToString(l.RootHash), DataBlocks: l.DataBlocks, FSType: l.FSType})
	if err != nil {
		return nil, false, err
	}
	if err := os.WriteFile(filepath.Join(tmp, "meta"), b, 0o600); err != nil {
		return nil, false, err
	}
	if err := os.Rename(l.Path, img); err != nil {
		return nil, false, err
	}
	if err := os.Rename(filepath.Join(tmp, "meta"), meta); err != nil {
		return nil, false, err
	}
	l.Path = img
	return l, false, nil
}

func (c *layerCache) load(img, meta, src string) (*rootfs.LayerImage, error) {
	b, err := os.ReadFile(meta)
	if err != nil {
		return nil, err
	}
	var e cacheEntry
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, err
	}
	root, err := hex.DecodeString(e.RootHash)
	if err != nil || len(root) != 32 || e.Source != src || e.DataBlocks == 0 {
		return nil, errors.New("layer cache entry is damaged")
	}
	if _, err := os.Stat(img); err != nil {
		return nil, err
	}
	return &rootfs.LayerImage{Path: img, RootHash: root, DataBlocks: e.DataBlocks, FSType: e.FSType}, nil
}

// prune drops entries whose layer directory is gone or has changed.
func (c *layerCache) prune() {
	metas, _ := filepath.Glob(filepath.Join(c.dir, "*.json"))
	for _, meta := range metas {
		b, err := os.ReadFile(meta)
		if err != nil {
			continue
		}
		var e cacheEntry
		key := strings.TrimSuffix(filepath.Base(meta), ".json")
		if json.Unmarshal(b, &e) == nil && e.Source != "" {
			if k, err := cacheKey(e.Source); err == nil && k == key {
				continue
			}
		}
		// A VM still using the image keeps its open file.
		os.Remove(meta)
		os.Remove(filepath.Join(c.dir, key+".img"))
	}
}
