package kernel_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cocoon-containers/cocoon/rootfs/cpio"
	"github.com/cocoon-containers/cocoon/rootfs/kernel"
	"github.com/cocoon-containers/cocoon/rootfs/kernel/kerneltest"
	"github.com/cocoon-containers/cocoon/rootfs/rpm/rpmtest"
)

func TestUnpackRPM(t *testing.T) {
	const fc = "6.6.9-200.fc39.x86_64"
	tests := []struct {
		name, version, release, comp string
		files                        []kerneltest.File
		vmlinuz, kver, config        string
		modules                      bool
	}{
		{
			name: "modules and vmlinuz under lib/modules", version: "6.6.9", release: "200.fc39", comp: "zstd",
			files: []kerneltest.File{
				{Path: "/lib/modules/" + fc + "/vmlinuz", Data: []byte("bzImage")},
				{Path: "/lib/modules/" + fc + "/config", Data: []byte("CONFIG_VIRTIO=y\n")},
				{Path: "/lib/modules/" + fc + "/kernel/drivers/virtio/virtio.ko.xz", Data: []byte("xz")},
				{Path: "/boot/.vmlinuz-" + fc + ".hmac", Data: []byte("hmac")},
			},
			vmlinuz: "lib/modules/" + fc + "/vmlinuz", kver: fc, config: "lib/modules/" + fc + "/config", modules: true,
		},
		{
			name: "azure linux kernel-uvm", version: "6.1.58.mshv8", release: "1.azl3", comp: "xz",
			files: []kerneltest.File{
				{Path: "/usr/share/cloud-hypervisor/bzImage", Data: []byte("bzImage")},
				{Path: "/usr/share/cloud-hypervisor/vmlinux.bin", Data: []byte("ELF")},
				{Path: "/lib/modules/kernel-uvm/vmlinux", Data: []byte("/usr/share/cloud-hypervisor/vmlinux.bin"), Link: true},
			},
			vmlinuz: "usr/share/cloud-hypervisor/bzImage", kver: "6.1.58.mshv8-1.azl3",
		},
		{
			name: "debian-like layout", version: "6.6.1", release: "1", comp: "gzip",
			files: []kerneltest.File{
				{Path: "/boot/vmlinuz-6.6.1-azl", Data: []byte("bzImage")},
				{Path: "/boot/config-6.6.1-azl", Data: []byte("CONFIG_VIRTIO=y\n")},
				{Path: "/lib/modules/6.6.1-azl/modules.builtin", Data: []byte("kernel/drivers/virtio/virtio.ko\n")},
			},
			vmlinuz: "boot/vmlinuz-6.6.1-azl", kver: "6.6.1-azl", config: "boot/config-6.6.1-azl", modules: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			pkg := kerneltest.WriteRPM(t, dir, tt.version, tt.release, tt.comp, tt.files)
			out := filepath.Join(dir, "unpacked")
			var progress bytes.Buffer
			for round := 0; round < 2; round++ { // the second round reuses the tree
				k, err := kernel.UnpackRPM(context.Background(), pkg, out, &progress)
				if err != nil {
					t.Fatal(err)
				}
				if got, want := k.Vmlinuz, filepath.Join(out, tt.vmlinuz); got != want {
					t.Errorf("Vmlinuz = %s, want %s", got, want)
				}
				if got, want := k.Version, tt.kver; got != want {
					t.Errorf("Version = %s, want %s", got, want)
				}
				wantConfig := ""
				if tt.config != "" {
					wantConfig = filepath.Join(out, tt.config)
				}
				if got := k.Config; got != wantConfig {
					t.Errorf("Config = %q, want %q", got, wantConfig)
				}
				if got := k.ModulesDir != ""; got != tt.modules {
					t.Errorf("ModulesDir = %q, want modules %v", k.ModulesDir, tt.modules)
				}
				if k.Package != pkg {
					t.Errorf("Package = %s, want %s", k.Package, pkg)
				}
			}
			if n := strings.Count(progress.String(), "unpacking"); n != 1 {
				t.Errorf("unpacked %d times, want once (then reused)", n)
			}
		})
	}
}

func TestUnpackRPMRefusesEscapes(t *testing.T) {
	dir := t.TempDir()
	a := cpio.New()
	a.AddFile("boot/vmlinuz-1", 0o644, []byte("k"))
	var payload bytes.Buffer
	a.WriteTo(&payload)
	// Rename an entry so that it climbs out of the extraction directory.
	evil := bytes.Replace(payload.Bytes(), []byte("boot/vmlinuz-1\x00"), []byte("../../evil-123\x00"), 1)
	p := filepath.Join(dir, "evil.rpm")
	f, _ := os.Create(p)
	if err := rpmtest.Write(f, rpmtest.Spec{Name: "kernel", Version: "1", Release: "1", Payload: evil}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	out := filepath.Join(dir, "a", "b")
	os.MkdirAll(filepath.Dir(out), 0o755)
	_, err := kernel.UnpackRPM(context.Background(), p, out, nil)
	if err == nil || !strings.Contains(err.Error(), "escapes the extraction directory") {
		t.Fatalf("UnpackRPM of an escaping entry: %v, want an escape error", err)
	}
	for _, q := range []string{filepath.Join(dir, "evil-123"), filepath.Join(dir, "a", "evil-123")} {
		if _, err := os.Stat(q); err == nil {
			t.Fatalf("%s was written outside the extraction directory", q)
		}
	}
}

func TestFindIgnoresEscapingSymlinks(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "boot"), 0o755)
	host := filepath.Join(t.TempDir(), "host-kernel")
	os.WriteFile(host, []byte("host"), 0o644)
	os.Symlink(host, filepath.Join(root, "boot/vmlinuz-9.9"))
	if k, err := kernel.Find(root); err == nil {
		t.Fatalf("Find followed a symlink out of the tree to %s", k.Vmlinuz)
	}
}
