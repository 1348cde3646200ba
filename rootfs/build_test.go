package rootfs

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/cocoon-containers/cocoon/rootfs/kernel/kerneltest"
	"github.com/cocoon-containers/cocoon/rootfs/verity"
)

var (
	helloOnce sync.Once
	helloDir  string
	helloErr  error
)

// helloBinaries builds testdata/hello three ways: static with cgo (a valid
// agent stand-in), without cgo, and dynamically linked.
func helloBinaries(t *testing.T) (static, nocgo, dynamic string) {
	t.Helper()
	helloOnce.Do(func() {
		helloDir, helloErr = os.MkdirTemp("", "cocoon-hello-")
		if helloErr != nil {
			return
		}
		builds := []struct {
			out, cgo string
			args     []string
		}{
			{"static", "1", []string{"-ldflags", "-extldflags -static"}},
			{"nocgo", "0", nil},
			{"dynamic", "1", nil},
		}
		for _, b := range builds {
			args := append([]string{"build", "-o", filepath.Join(helloDir, b.out)}, b.args...)
			cmd := exec.Command("go", append(args, "./testdata/hello")...)
			cmd.Env = append(os.Environ(), "CGO_ENABLED="+b.cgo)
			if out, err := cmd.CombinedOutput(); err != nil && b.cgo == "1" {
				helloErr = errors.New(string(out))
				return
			} else if err != nil && b.cgo == "0" {
				// A cgo-only program does not build without cgo: use a plain one.
				plain := filepath.Join(helloDir, "plain.go")
				os.WriteFile(plain, []byte("package main\nfunc main(){}\n"), 0o644)
				cmd := exec.Command("go", "build", "-o", filepath.Join(helloDir, b.out), plain)
				cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
				if out, err := cmd.CombinedOutput(); err != nil {
					helloErr = errors.New(string(out))
					return
				}
			}
		}
	})
	if helloErr != nil {
		t.Fatalf("build test binaries: %v", helloErr)
	}
	return filepath.Join(helloDir, "static"), filepath.Join(helloDir, "nocgo"), filepath.Join(helloDir, "dynamic")
}

func TestMain(m *testing.M) {
	code := m.Run()
	if helloDir != "" {
		os.RemoveAll(helloDir)
	}
	os.Exit(code)
}

func TestCheckAgent(t *testing.T) {
	if testing.Short() {
		t.Skip("builds static cgo binaries")
	}
	static, nocgo, dynamic := helloBinaries(t)
	if err := CheckAgent(static); err != nil {
		t.Fatalf("CheckAgent(static cgo) = %v", err)
	}
	for name, p := range map[string]string{"without cgo": nocgo, "dynamic": dynamic, "not ELF": "build.go"} {
		if err := CheckAgent(p); !errors.Is(err, ErrBadAgent) {
			t.Errorf("CheckAgent(%s) = %v, want ErrBadAgent", name, err)
		}
	}
	if err := CheckAgent(nocgo); !strings.Contains(err.Error(), "without cgo") {
		t.Errorf("no-cgo error %q does not say so", err)
	}
}

func TestSimulatedMeasurementIgnoresSimParams(t *testing.T) {
	var k, i [32]byte
	k[0], i[0] = 1, 2
	a := SimulatedMeasurement(k, i, "console=ttyS0 quiet")
	b := SimulatedMeasurement(k, i, "console=ttyS0  cocoon.sim_host_data=00 quiet cocoon.sim_measurement=11")
	if a != b {
		t.Fatal("cocoon.sim_* parameters changed the measurement")
	}
	if c := SimulatedMeasurement(k, i, "console=ttyS0"); c == a {
		t.Fatal("a different command line gave the same measurement")
	}
	i[0] = 3
	if c := SimulatedMeasurement(k, i, "console=ttyS0 quiet"); c == a {
		t.Fatal("a different initrd gave the same measurement")
	}
}

func writeConfig(t *testing.T, dir, agent, extra string) string {
	t.Helper()
	p := filepath.Join(dir, "build.toml")
	cfg := "agent = \"" + agent + "\"\nkernel = \"" + kernelDir + "\"\ncmdline = \"console=ttyS0 quiet\"\n" + extra
	if err := os.WriteFile(p, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

var kernelDir string

func TestBuild(t *testing.T) {
	k := kerneltest.Debian(t)
	kernelDir = filepath.Dir(filepath.Dir(filepath.Dir(k.ModulesDir)))
	static, _, _ := helloBinaries(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.MkdirAll(filepath.Join(src, "etc"), 0o755)
	os.WriteFile(filepath.Join(src, "etc", "motd"), []byte("protected\n"), 0o644)
	cfgPath := writeConfig(t, dir, static, "[verity]\nsource = \"src\"\nsalt = \"0011\"\n")

	build := func(out string) (*Manifest, []byte) {
		cfg, err := LoadConfig(cfgPath)
		if err != nil {
			t.Fatal(err)
		}
		var progress bytes.Buffer
		m, err := Build(context.Background(), cfg, out, &progress)
		if err != nil {
			t.Fatalf("Build: %v\n%s", err, progress.String())
		}
		if !strings.Contains(progress.String(), "writing initrd") {
			t.Errorf("no progress output: %q", progress.String())
		}
		b, err := os.ReadFile(filepath.Join(out, InitrdFile))
		if err != nil {
			t.Fatal(err)
		}
		return m, b
	}
	m1, initrd1 := build(filepath.Join(dir, "out1"))
	_, initrd2 := build(filepath.Join(dir, "out2"))

	t.Run("reproducible", func(t *testing.T) {
		for _, f := range []string{InitrdFile, KernelFile, VerityImageFile, VerityHashFile, ManifestFile} {
			a, _ := os.ReadFile(filepath.Join(dir, "out1", f))
			b, _ := os.ReadFile(filepath.Join(dir, "out2", f))
			if len(a) == 0 || !bytes.Equal(a, b) {
				t.Errorf("%s differs between two builds of the same inputs (or is empty)", f)
			}
		}
		if !bytes.Equal(initrd1, initrd2) {
			t.Error("initrds differ")
		}
	})

	t.Run("initrd contents", func(t *testing.T) {
		zr, err := gzip.NewReader(bytes.NewReader(initrd1))
		if err != nil {
			t.Fatal(err)
		}
		var raw bytes.Buffer
		raw.ReadFrom(zr)
		root := t.TempDir()
		cmd := exec.Command("cpio", "-i", "-d", "--quiet", "--no-absolute-filenames")
		cmd.Dir, cmd.Stdin = root, &raw
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("cpio -i: %v\n%s", err, out)
		}
		init, err := os.ReadFile(filepath.Join(root, "init"))
		agent, _ := os.ReadFile(static)
		if err != nil || !bytes.Equal(init, agent) {
			t.Fatalf("/init is not the agent (%v)", err)
		}
		load, err := os.ReadFile(filepath.Join(root, "etc/cocoon/modules.load"))
		if err != nil {
			t.Fatal(err)
		}
		var mods []string
		for _, l := range strings.Split(string(load), "\n") {
			if l == "" || strings.HasPrefix(l, "#") {
				continue
			}
			if _, err := os.Stat(filepath.Join(root, l)); err != nil {
				t.Errorf("modules.load names %s, not in the initrd", l)
			}
			mods = append(mods, filepath.Base(l))
		}
		order := strings.Join(mods, " ")
		for _, pair := range [][2]string{{"virtio_ring.ko", "virtio.ko"}, {"virtio.ko", "virtio_console.ko"}, {"dm-mod.ko", "dm-verity.ko"}} {
			i, j := strings.Index(order, " "+pair[0]), strings.Index(order, " "+pair[1])
			if strings.HasPrefix(order, pair[0]) {
				i = 0
			}
			if i < 0 || j < 0 || i > j {
				t.Errorf("%s must precede %s in %s", pair[0], pair[1], order)
			}
		}
		pol, _ := os.ReadFile(filepath.Join(root, "etc/cocoon/default-policy.rego"))
		if !bytes.Equal(pol, AllowAllPolicy()) {
			t.Error("default policy in the initrd is not the allow-all policy")
		}
	})

	t.Run("manifest", func(t *testing.T) {
		b, err := os.ReadFile(filepath.Join(dir, "out1", ManifestFile))
		if err != nil {
			t.Fatal(err)
		}
		var m Manifest
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		kern, _ := os.ReadFile(filepath.Join(dir, "out1", KernelFile))
		kSum, iSum := sha(kern), sha(initrd1)
		want := SimulatedMeasurement(kSum, iSum, m.Cmdline+" "+m.VerityCmdline+" cocoon.attestation=simulated")
		if got := m.ReferenceValues.SimulatedMeasurement; got != hexs(want[:]) {
			t.Errorf("simulated measurement = %s, want %s", got, hexs(want[:]))
		}
		hd := PolicyHostData(AllowAllPolicy())
		if got := m.ReferenceValues.DefaultPolicyHostData; got != hexs(hd[:]) {
			t.Errorf("host data = %s, want %s", got, hexs(hd[:]))
		}
		if m.Outputs["initrd"].SHA256 != hexs(iSum[:]) || m.Inputs["agent"].SHA256 == "" || m.Inputs["kernel_image"].SHA256 == "" || m.Inputs["module/virtio_console"].SHA256 == "" {
			t.Errorf("manifest digests incomplete: %+v %+v", m.Inputs, m.Outputs)
		}
		if m1.ReferenceValues.VerityRootHash == "" || !strings.Contains(m.VerityCmdline, m1.ReferenceValues.VerityRootHash) {
			t.Errorf("verity root hash %q not in command line %q", m1.ReferenceValues.VerityRootHash, m.VerityCmdline)
		}
	})

	t.Run("verity image checks out", func(t *testing.T) {
		img := filepath.Join(dir, "out1", VerityImageFile)
		hash := filepath.Join(dir, "out1", VerityHashFile)
		out, err := exec.Command("veritysetup", "verify", img, hash, m1.ReferenceValues.VerityRootHash).CombinedOutput()
		if err != nil {
			t.Fatalf("veritysetup verify: %v\n%s", err, out)
		}
		d, _ := os.Open(img)
		defer d.Close()
		h, _ := os.Open(hash)
		defer h.Close()
		root, _ := hexd(m1.ReferenceValues.VerityRootHash)
		if err := verity.Verify(d, h, root); err != nil {
			t.Fatal(err)
		}
	})
}

func TestBuildErrors(t *testing.T) {
	k := kerneltest.Debian(t)
	kernelDir = filepath.Dir(filepath.Dir(filepath.Dir(k.ModulesDir)))
	static, nocgo, _ := helloBinaries(t)
	tests := []struct {
		name, agent, extra, want string
	}{
		{"missing module", static, "modules = [\"virtio_console\", \"no_such_module\"]\n", "no_such_module"},
		{"agent without cgo", nocgo, "", "without cgo"},
		{"unknown key", static, "colour = \"blue\"\n", "unknown keys"},
		{"bad verity fs", static, "[verity]\nsource = \".\"\nfs = \"zfs\"\n", "want erofs or ext4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg, err := LoadConfig(writeConfig(t, dir, tt.agent, tt.extra))
			if err == nil {
				_, err = Build(context.Background(), cfg, filepath.Join(dir, "out"), nil)
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}
