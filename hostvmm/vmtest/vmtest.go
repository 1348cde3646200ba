// Package vmtest builds boot images for launcher tests and benchmarks:
// Debian's kernel (fetched once into the shared cache) and an initrd whose
// /init is the helloinit command, which serves the agent Health service on
// the virtio-serial port agent.channel.0.
package vmtest

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/cocoon-containers/cocoon/rootfs"
	"github.com/cocoon-containers/cocoon/rootfs/cpio"
)

// KernelCache is where the Debian kernel package is downloaded and unpacked.
const KernelCache = "/var/cache/cocoon/kernel"

// Modules are what helloinit needs: the virtio transports, the console port
// driver, the shared-directory file systems and vsock.
var Modules = []string{"virtio_mmio", "virtio_pci", "virtio_console", "9p", "9pnet_virtio", "virtiofs",
	"vsock", "vmw_vsock_virtio_transport"}

// Image is a bootable kernel and initrd.
type Image struct {
	Kernel, Initrd string
	Manifest       *rootfs.Manifest
	// Agent is the agent binary the initrd carries (AgentImage).
	Agent string
}

// RequireRoot skips t when not running as root or under -short.
func RequireRoot(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("boots VMs: skipped under -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("boots VMs and mounts: needs root")
	}
}

// HelloInitPackage is the import path of the helloinit command; building it
// needs a working directory inside the module (tests run in theirs).
const HelloInitPackage = "github.com/cocoon-containers/cocoon/hostvmm/vmtest/helloinit"

// BuildHelloInit compiles helloinit statically into dir and returns its path.
func BuildHelloInit(ctx context.Context, dir string) (string, error) {
	out := filepath.Join(dir, "helloinit")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", out, HelloInitPackage)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build helloinit: %w: %s", err, b)
	}
	return out, nil
}

// BuildImage makes a kernel and initrd in dir with init as /init and
// Modules.
func BuildImage(ctx context.Context, init, dir string) (*Image, error) {
	return BuildImageWith(ctx, init, dir, Modules, "")
}

// BuildImageWith makes a kernel and initrd in dir with init as /init, the
// given modules (with rootfs.DefaultOptionalModules allowed to be missing)
// and, when agentConfig is set, that file as /etc/cocoon/agent.toml.
func BuildImageWith(ctx context.Context, init, dir string, modules []string, agentConfig string) (*Image, error) {
	c := &rootfs.Config{
		Agent:           init,
		Kernel:          "linux-image-amd64",
		KernelCache:     KernelCache,
		Modules:         modules,
		OptionalModules: rootfs.DefaultOptionalModules,
		AgentConfig:     agentConfig,
		SkipAgentCheck:  true,
	}
	m, err := rootfs.Build(ctx, c, dir, nil)
	if err != nil {
		return nil, fmt.Errorf("build test image: %w", err)
	}
	return &Image{
		Kernel:   filepath.Join(dir, rootfs.KernelFile),
		Initrd:   filepath.Join(dir, rootfs.InitrdFile),
		Manifest: m,
	}, nil
}

// HelloImage builds helloinit and an image around it in dir.
func HelloImage(ctx context.Context, dir string) (*Image, error) {
	init, err := BuildHelloInit(ctx, dir)
	if err != nil {
		return nil, err
	}
	return BuildImage(ctx, init, dir)
}

// PadInitrd grows an initrd to size bytes by appending a second, gzipped
// cpio archive holding an incompressible filler file, then zeros (the
// kernel skips zero padding between archives). Benchmarks use it to give a
// reference init the same initrd size as the agent's.
func PadInitrd(path string, size int64) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	const overhead = 4096
	n := size - st.Size() - overhead
	if n < 0 {
		return fmt.Errorf("pad initrd %s: already %d bytes, want %d", path, st.Size(), size)
	}
	filler := make([]byte, n)
	if _, err := rand.Read(filler); err != nil {
		return err
	}
	a := cpio.New()
	if err := a.AddFile("/filler", 0o644, filler); err != nil {
		return err
	}
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.NoCompression)
	if _, err := a.WriteTo(zw); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	pad := size - st.Size() - int64(gz.Len())
	if pad < 0 {
		return fmt.Errorf("pad initrd %s: filler archive overshoots by %d bytes", path, -pad)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	if _, err := f.Write(append(gz.Bytes(), make([]byte, pad)...)); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// AgentPackage is the import path of the guest agent.
const AgentPackage = "github.com/cocoon-containers/cocoon/agent/cmd/cocoon-agent"

// BuildAgent compiles the guest agent into dir the way `make build` does:
// static, with cgo (libcontainer's nsenter), and with the simulated SNP
// provider.
func BuildAgent(ctx context.Context, dir string) (string, error) {
	out := filepath.Join(dir, "cocoon-agent")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w -extldflags -static",
		"-tags", "netgo osusergo simulated", "-o", out, AgentPackage)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build cocoon-agent: %w: %s", err, b)
	}
	return out, nil
}

// AgentImage builds the agent and the standard guest image around it in
// dir: rootfs.DefaultModules and the allow-all default policy, as
// `cocoon-rootfs build` makes it.
func AgentImage(ctx context.Context, dir string) (*Image, error) {
	agent, err := BuildAgent(ctx, dir)
	if err != nil {
		return nil, err
	}
	c := &rootfs.Config{Agent: agent, Kernel: "linux-image-amd64", KernelCache: KernelCache}
	m, err := rootfs.Build(ctx, c, dir, nil)
	if err != nil {
		return nil, fmt.Errorf("build agent image: %w", err)
	}
	return &Image{
		Kernel:   filepath.Join(dir, rootfs.KernelFile),
		Initrd:   filepath.Join(dir, rootfs.InitrdFile),
		Manifest: m,
		Agent:    agent,
	}, nil
}

var shared struct {
	once sync.Once
	dir  string
	img  *Image
	err  error
}

// SharedAgentImage is AgentImage built once per test binary, in a
// temporary directory that RemoveShared (from TestMain) removes.
func SharedAgentImage(tb testing.TB) *Image {
	tb.Helper()
	shared.once.Do(func() {
		if shared.dir, shared.err = os.MkdirTemp("", "cocoon-agent-image-"); shared.err != nil {
			return
		}
		shared.img, shared.err = AgentImage(context.Background(), shared.dir)
	})
	if shared.err != nil {
		tb.Fatal(shared.err)
	}
	return shared.img
}

// RemoveShared removes what SharedAgentImage built.
func RemoveShared() {
	if shared.dir != "" {
		os.RemoveAll(shared.dir)
	}
}
