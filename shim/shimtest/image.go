package shimtest

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"time"
)

// BusyboxPath is Debian busybox-static's binary.
const BusyboxPath = "/bin/busybox"

// BusyboxImageName is the name the image gets in containerd.
const BusyboxImageName = "docker.io/cocoon/busybox:test"

// PauseImageName is a pause image made from the same busybox layer.
const PauseImageName = "docker.io/cocoon/pause:test"

type blob struct {
	mediaType string
	data      []byte
}

func (b blob) digest() string {
	sum := sha256.Sum256(b.data)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func (b blob) descriptor() map[string]any {
	return map[string]any{"mediaType": b.mediaType, "digest": b.digest(), "size": len(b.data)}
}

// busyboxLayer is an uncompressed layer with /bin/busybox and one symlink
// per applet, plus the few files containers expect.
func busyboxLayer() ([]byte, error) {
	bb, err := os.ReadFile(BusyboxPath)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNoBusybox, err)
	}
	out, err := exec.Command(BusyboxPath, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("busybox --list: %w", err)
	}
	applets := strings.Fields(string(out))
	sort.Strings(applets)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(0, 0)
	for _, d := range []string{"bin/", "etc/", "tmp/", "proc/", "sys/", "dev/", "root/"} {
		mode := int64(0o755)
		if d == "tmp/" {
			mode = 0o1777
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: mode, ModTime: mtime}); err != nil {
			return nil, err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: int64(len(bb)), ModTime: mtime}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(bb); err != nil {
		return nil, err
	}
	for _, a := range applets {
		if a == "busybox" || strings.Contains(a, "/") {
			continue
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", ModTime: mtime}); err != nil {
			return nil, err
		}
	}
	passwd := []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
	group := []byte("root:x:0:\nnogroup:x:65534:\n")
	motd := []byte("deleted by the release layer\n")
	for _, f := range []struct {
		name string
		data []byte
	}{{"etc/passwd", passwd}, {"etc/group", group}, {"etc/motd", motd}} {
		name, data := f.name, f.data
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: mtime}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// releaseLayer is BusyboxImageName's second layer: a file, a whiteout of
// a file the busybox layer has and an opaque directory, so that images of
// several layers, and deletions across them, are what tests run.
func releaseLayer() ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(0, 0)
	release := []byte("ID=cocoon-test\n")
	for _, h := range []*tar.Header{
		{Typeflag: tar.TypeReg, Name: "etc/os-release", Mode: 0o644, Size: int64(len(release)), ModTime: mtime},
		{Typeflag: tar.TypeReg, Name: "etc/.wh.motd", Mode: 0o644, ModTime: mtime},
		{Typeflag: tar.TypeReg, Name: "root/.wh..wh..opq", Mode: 0o644, ModTime: mtime},
	} {
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if h.Size > 0 {
			if _, err := tw.Write(release); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// WriteBusyboxImage writes an OCI image layout tarball holding two images
// built from the busybox layer: BusyboxImageName (sh, with a second layer
// on top) and PauseImageName (sleeps until killed, standing in for the
// pause container).
func WriteBusyboxImage(path string) error {
	layer, err := busyboxLayer()
	if err != nil {
		return err
	}
	release, err := releaseLayer()
	if err != nil {
		return err
	}
	lb := blob{"application/vnd.oci.image.layer.v1.tar", layer}
	rb := blob{"application/vnd.oci.image.layer.v1.tar", release}
	blobs := []blob{lb, rb}
	var manifests []map[string]any
	for _, img := range []struct {
		name   string
		cmd    []string
		layers []blob
	}{
		{BusyboxImageName, []string{"/bin/sh"}, []blob{lb, rb}},
		{PauseImageName, []string{"/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait; done"}, []blob{lb}},
	} {
		var diffIDs, descs []any
		for _, l := range img.layers {
			diffIDs = append(diffIDs, l.digest()) // uncompressed: digest = diff_id
			descs = append(descs, l.descriptor())
		}
		cfg, _ := json.Marshal(map[string]any{
			"architecture": "amd64",
			"os":           "linux",
			"config":       map[string]any{"Cmd": img.cmd, "Env": []string{"PATH=/bin"}, "WorkingDir": "/"},
			"rootfs":       map[string]any{"type": "layers", "diff_ids": diffIDs},
		})
		cb := blob{"application/vnd.oci.image.config.v1+json", cfg}
		man, _ := json.Marshal(map[string]any{
			"schemaVersion": 2,
			"mediaType":     "application/vnd.oci.image.manifest.v1+json",
			"config":        cb.descriptor(),
			"layers":        descs,
		})
		mb := blob{"application/vnd.oci.image.manifest.v1+json", man}
		blobs = append(blobs, cb, mb)
		d := mb.descriptor()
		d["annotations"] = map[string]string{
			"io.containerd.image.name":          img.name,
			"org.opencontainers.image.ref.name": img.name[strings.LastIndex(img.name, ":")+1:],
		}
		d["platform"] = map[string]string{"architecture": "amd64", "os": "linux"}
		manifests = append(manifests, d)
	}
	index, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests})
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	files := []struct {
		name string
		data []byte
	}{{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)}, {"index.json", index}}
	seen := map[string]bool{}
	for _, b := range blobs {
		name := "blobs/sha256/" + strings.TrimPrefix(b.digest(), "sha256:")
		if seen[name] {
			continue
		}
		seen[name] = true
		files = append(files, struct {
			name string
			data []byte
		}{name, b.data})
	}
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755}); err != nil {
			return err
		}
	}
	for _, fl := range files {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: fl.name, Mode: 0o644, Size: int64(len(fl.data))}); err != nil {
			return err
		}
		if _, err := tw.Write(fl.data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return f.Close()
}

// ImportBusybox writes the image tarball and imports it into containerd.
func (c *Containerd) ImportBusybox(ctx context.Context) error {
	path := c.Dir + "/busybox-oci.tar"
	if err := WriteBusyboxImage(path); err != nil {
		return err
	}
	_, _, err := c.Ctr(ctx, "images", "import", path)
	if err != nil {
		return err
	}
	return nil
}
