package rootfs

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-containers/cocoon/rootfs/cpio"
	"github.com/cocoon-containers/cocoon/rootfs/kernel/kerneltest"
	"github.com/cocoon-containers/cocoon/rootfs/kmod/kmodtest"
)

const fakeKver = "6.6.9-azl"

// fakeKernelRPM writes an RPM-packaged kernel whose modules are compressed
// in three ways and depend on each other.
func fakeKernelRPM(t *testing.T, dir string) string {
	t.Helper()
	var config strings.Builder
	for _, o := range RequiredKernelConfig {
		config.WriteString(o + "=y\n")
	}
	mod := func(rel, name string, deps ...string) kerneltest.File {
		ext := rel[strings.Index(rel, ".ko"):]
		return kerneltest.File{Path: "/lib/modules/" + fakeKver + "/kernel/" + rel, Data: kmodtest.Compress(ext, kmodtest.Module(name, deps...))}
	}
	files := []kerneltest.File{
		{Path: "/boot/vmlinuz-" + fakeKver, Data: []byte("fake bzImage")},
		{Path: "/boot/config-" + fakeKver, Data: []byte(config.String())},
		{Path: "/lib/modules/" + fakeKver + "/modules.builtin", Data: []byte("kernel/fs/overlayfs/overlay.ko\n")},
		mod("drivers/virtio/virtio_ring.ko.xz", "virtio_ring"),
		mod("drivers/virtio/virtio.ko.zst", "virtio", "virtio_ring"),
		mod("drivers/char/virtio_console.ko.gz", "virtio_console", "virtio", "virtio_ring"),
		mod("drivers/md/dm-bufio.ko", "dm_bufio"),
		mod("drivers/md/dm-mod.ko.xz", "dm_mod"),
		mod("drivers/md/dm-verity.ko.xz", "dm_verity", "dm-bufio", "dm-mod"),
	}
	return kerneltest.WriteRPM(t, dir, "6.6.9", "1.azl3", "zstd", files)
}

// sourceTree writes a small root filesystem with the given file times.
func sourceTree(t *testing.T, dir string, mtime time.Time) {
	t.Helper()
	files := map[string]string{"etc/motd": "protected\n", "usr/bin/tool": "#!/bin/sh\n", "a b/c": "space"}
	for p, data := range files {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(full, mtime, mtime)
	}
	for _, d := range []string{"etc", "usr/bin", "usr", "a b", "."} {
		os.Chtimes(filepath.Join(dir, d), mtime, mtime)
	}
}

func readInitrd(t *testing.T, path string) map[string][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	r := cpio.NewReader(zr)
	for {
		h, err := r.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		out[h.Name] = b
	}
}

func TestBuildFromRPM(t *testing.T) {
	for _, fsType := range []string{"erofs", "ext4"} {
		t.Run(fsType, func(t *testing.T) {
			dir := t.TempDir()
			rpmPath := fakeKernelRPM(t, dir)
			agent := filepath.Join(dir, "agent")
			os.WriteFile(agent, []byte("stand-in agent"), 0o755)
			// The same tree twice, with different file times.
			sourceTree(t, filepath.Join(dir, "src1"), time.Unix(1000, 0))
			sourceTree(t, filepath.Join(dir, "src2"), time.Unix(2000000000, 0))
			build := func(n int) (*Manifest, string) {
				cfg := fmt.Sprintf(`agent = "agent"
kernel = %q
kernel_cache = "cache%d"
cmdline = "console=ttyS0"
skip_agent_check = true
modules = ["virtio_console", "dm-verity", "overlay"]
[module_params]
dm-verity = "require_signatures=0"
[verity]
source = "src%d"
fs = %q
salt = "c0c0"
`, rpmPath, n, n, fsType)
				p := filepath.Join(dir, fmt.Sprintf("build%d.toml", n))
				os.WriteFile(p, []byte(cfg), 0o644)
				c, err := LoadConfig(p)
				if err != nil {
					t.Fatal(err)
				}
				out := filepath.Join(dir, fmt.Sprintf("out%d", n))
				var progress bytes.Buffer
				m, err := Build(context.Background(), c, out, &progress)
				if err != nil {
					t.Fatalf("Build: %v\n%s", err, progress.String())
				}
				return m, out
			}
			m, out1 := build(1)
			_, out2 := build(2)
			for _, f := range []string{InitrdFile, KernelFile, VerityImageFile, VerityHashFile, ManifestFile} {
				a, _ := os.ReadFile(filepath.Join(out1, f))
				b, _ := os.ReadFile(filepath.Join(out2, f))
				if len(a) == 0 || !bytes.Equal(a, b) {
					t.Errorf("%s differs between builds of the same inputs (or is empty)", f)
				}
			}

			files := readInitrd(t, filepath.Join(out1, InitrdFile))
			mods := "/lib/modules/" + fakeKver + "/kernel/drivers/"
			want := "# kernel modules in load order, written by cocoon-rootfs\n" +
				mods + "virtio/virtio_ring.ko\n" + mods + "virtio/virtio.ko\n" + mods + "char/virtio_console.ko\n" +
				mods + "md/dm-bufio.ko\n" + mods + "md/dm-mod.ko\n" + mods + "md/dm-verity.ko require_signatures=0\n"
			if got := string(files["etc/cocoon/modules.load"]); got != want {
				t.Errorf("modules.load:\n%s\nwant:\n%s", got, want)
			}
			for _, l := range strings.Split(strings.TrimSpace(want), "\n")[1:] {
				p := strings.TrimPrefix(strings.Fields(l)[0], "/")
				if b := files[p]; !bytes.HasPrefix(b, []byte("\x7fELF")) {
					t.Errorf("%s in the initrd is not a decompressed ELF module", p)
				}
			}
			if got := string(files["init"]); got != "stand-in agent" {
				t.Errorf("/init = %q", got)
			}

			img, hash := filepath.Join(out1, VerityImageFile), filepath.Join(out1, VerityHashFile)
			if out, err := exec.Command("veritysetup", "verify", img, hash, m.ReferenceValues.VerityRootHash).CombinedOutput(); err != nil {
				t.Fatalf("veritysetup verify: %v\n%s", err, out)
			}
			// The dm-mod.create table's geometry (tree one block in, after
			// the superblock) is what veritysetup checks without a superblock.
			f := strings.Fields(strings.Split(m.VerityDMCreate, ",ro,")[1])
			// 0 <sectors> verity 1 <data> <hash> 4096 4096 <blocks> <hash start> sha256 <root> <salt>"
			if len(f) < 13 || f[9] != "1" || f[11] != m.ReferenceValues.VerityRootHash {
				t.Fatalf("dm-mod.create table %q", m.VerityDMCreate)
			}
			salt := strings.TrimSuffix(f[12], `"`)
			out, err := exec.Command("veritysetup", "verify", "--no-superblock", "--hash-offset=4096",
				"--data-blocks="+f[8], "--salt="+salt, img, hash, f[11]).CombinedOutput()
			if err != nil {
				t.Fatalf("veritysetup verify with the dm-mod.create geometry: %v\n%s", err, out)
			}
			if !strings.Contains(m.VerityCmdline, "cocoon.rootfs_verity_salt=c0c0") {
				t.Errorf("verity command line %q lacks the salt", m.VerityCmdline)
			}
			if fsType == "ext4" {
				if out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput(); err != nil {
					t.Errorf("e2fsck: %v\n%s", err, out)
				}
			}
			kb, _ := os.ReadFile(filepath.Join(out1, KernelFile))
			ib, _ := os.ReadFile(filepath.Join(out1, InitrdFile))
			meas := SimulatedMeasurement(sha(kb), sha(ib), "console=ttyS0 "+m.VerityCmdline+" cocoon.attestation=simulated")
			if got, want := m.ReferenceValues.SimulatedMeasurement, hex.EncodeToString(meas[:]); got != want {
				t.Errorf("simulated measurement = %s, want %s", got, want)
			}
		})
	}
}

func TestBuildAllBuiltinKernel(t *testing.T) {
	dir := t.TempDir()
	rpmPath := kerneltest.WriteRPM(t, dir, "6.1.58.mshv8", "1.azl3", "xz", []kerneltest.File{
		{Path: "/usr/share/cloud-hypervisor/bzImage", Data: []byte("bzImage")},
		{Path: "/lib/modules/kernel-uvm/vmlinux", Data: []byte("/usr/share/cloud-hypervisor/vmlinux.bin"), Link: true},
	})
	os.WriteFile(filepath.Join(dir, "agent"), []byte("agent"), 0o755)
	tests := []struct {
		name, modules, wantErr string
	}{
		{"default modules", "", "ships no modules"},
		{"no modules", "modules = []\n", ""},
		{"unknown verity cmdline style", "modules = []\n[verity]\nsource = \".\"\ncmdline = \"grub\"\n", "want cocoon or dm-mod"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := fmt.Sprintf("agent = \"agent\"\nkernel = %q\nkernel_cache = \"cache%d\"\nskip_agent_check = true\n%s", rpmPath, i, tt.modules)
			p := filepath.Join(dir, fmt.Sprintf("b%d.toml", i))
			os.WriteFile(p, []byte(cfg), 0o644)
			c, err := LoadConfig(p)
			if err != nil {
				t.Fatal(err)
			}
			var progress bytes.Buffer
			m, err := Build(context.Background(), c, filepath.Join(dir, fmt.Sprintf("out%d", i)), &progress)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Build error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if m.KernelVersion != "6.1.58.mshv8-1.azl3" || len(m.Modules) != 0 {
				t.Errorf("kernel %s, modules %v", m.KernelVersion, m.Modules)
			}
			if !strings.Contains(progress.String(), "without its config") {
				t.Errorf("no warning about the missing kernel config in %q", progress.String())
			}
		})
	}
}

func TestCheckAgentConfig(t *testing.T) {
	tests := []struct {
		name, in, wantErr, unknown string
	}{
		{"all keys", `server_addr = "vsock://-1:1024"
log_level = "debug"
kbs_url = "http://127.0.0.1:8080"
attestation = "simulated"
sim_host_data = "` + strings.Repeat("ab", 32) + `"
sim_measurement = "` + strings.Repeat("cd", 48) + `"
`, "", ""},
		{"unknown keys reported", "log_level = \"info\"\nzeta = 1\nalpha = \"x\"\n", "", "alpha zeta"},
		{"bad address", `server_addr = "tcp://0.0.0.0:1"`, "server_addr", ""},
		{"bad attestation", `attestation = "tdx"`, "attestation", ""},
		{"short host data", `sim_host_data = "abcd"`, "64 hex digits", ""},
		{"measurement not hex", `sim_measurement = "` + strings.Repeat("zz", 48) + `"`, "96 hex digits", ""},
		{"not a string", `log_level = 3`, "want a string", ""},
		{"not toml", `log_level = `, "toml", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			unknown, err := CheckAgentConfig([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(unknown, " "); got != tt.unknown {
				t.Errorf("unknown keys = %q, want %q", got, tt.unknown)
			}
		})
	}
}
