package kernel_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/cocoon-containers/cocoon/rootfs/kernel"
)

// fakeDeb builds a kernel .deb with dpkg-deb.
func fakeDeb(t *testing.T, dir string) string {
	t.Helper()
	tree := filepath.Join(dir, "tree")
	files := map[string]string{
		"DEBIAN/control":          "Package: linux-image-9.9.9-test\nVersion: 9.9.9-1\nArchitecture: amd64\nMaintainer: test <t@example.org>\nDescription: test kernel\n",
		"boot/vmlinuz-9.9.9-test": "bzImage",
		"boot/config-9.9.9-test":  "CONFIG_VIRTIO=y\n",
		"lib/modules/9.9.9-test/kernel/drivers/virtio/virtio.ko": "module",
	}
	for p, data := range files {
		full := filepath.Join(tree, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	deb := filepath.Join(dir, "linux-image-9.9.9-test_9.9.9-1_amd64.deb")
	if out, err := exec.Command("dpkg-deb", "--root-owner-group", "--build", tree, deb).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb --build: %v\n%s", err, out)
	}
	return deb
}

// TestUnpackDebConcurrent unpacks one package from several goroutines at
// once, as test binaries of several packages do with the shared cache.
func TestUnpackDebConcurrent(t *testing.T) {
	dir := t.TempDir()
	deb := fakeDeb(t, dir)
	out := filepath.Join(dir, "cache", "linux-image-9.9.9-test")
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		progress bytes.Buffer
	)
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var p bytes.Buffer
			k, err := kernel.UnpackDeb(context.Background(), deb, out, &p)
			if err == nil && (k.Version != "9.9.9-test" || k.Vmlinuz != filepath.Join(out, "boot/vmlinuz-9.9.9-test")) {
				t.Errorf("kernel = %+v", k)
			}
			errs[i] = err
			mu.Lock()
			progress.Write(p.Bytes())
			mu.Unlock()
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("UnpackDeb #%d: %v", i, err)
		}
	}
	if n := strings.Count(progress.String(), "unpacking"); n != 1 {
		t.Errorf("unpacked %d times, want once", n)
	}
}
