package hostvmm

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/cocoon-containers/cocoon/rootfs"
)

func files(t *testing.T) (kernel, initrd, dir string) {
	t.Helper()
	dir = t.TempDir()
	kernel, initrd = filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initrd")
	for _, p := range []string{kernel, initrd} {
		if err := os.WriteFile(p, []byte(filepath.Base(p)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return kernel, initrd, dir
}

func TestValidate(t *testing.T) {
	kernel, initrd, dir := files(t)
	ok := func() Config {
		return Config{ID: "pod-1.a_b", StateDir: "/run/cocoon/pod-1", Kernel: kernel, Initrd: initrd}
	}
	tests := []struct {
		name string
		mod  func(c *Config)
		req  Requirements
		want error
	}{
		{"minimal", func(*Config) {}, Requirements{Kernel: true}, nil},
		{"process needs no kernel", func(c *Config) { c.Kernel, c.Initrd, c.AgentBinary = "", "", kernel }, Requirements{AgentBinary: true}, nil},
		{"empty id", func(c *Config) { c.ID = "" }, Requirements{}, errdefs.ErrInvalidArgument},
		{"network forward off loopback", func(c *Config) {
			c.Network = &Network{Forwards: []Forward{{GuestPort: 80, HostAddr: "192.0.2.1:80"}}}
		}, Requirements{}, errdefs.ErrInvalidArgument},
		{"network forward by name", func(c *Config) {
			c.Network = &Network{Forwards: []Forward{{GuestPort: 80, HostAddr: "localhost:80"}}}
		}, Requirements{}, errdefs.ErrInvalidArgument},
		{"network guest port reused", func(c *Config) {
			c.Network = &Network{Forwards: []Forward{{GuestPort: 80, HostAddr: "127.0.0.1:80"}, {GuestPort: 80, HostAddr: "127.0.0.1:81"}}}
		}, Requirements{}, errdefs.ErrInvalidArgument},
		{"network guest port zero", func(c *Config) {
			c.Network = &Network{Forwards: []Forward{{GuestPort: 0, HostAddr: "127.0.0.1:80"}}}
		}, Requirements{}, errdefs.ErrInvalidArgument},
		{"id with slash", func(c *Config) { c.ID = "a/b" }, Requirements{}, errdefs.ErrInvalidArgument},
		{"id with dots only", func(c *Config) { c.ID = ".." }, Requirements{}, errdefs.ErrInvalidArgument},
		{"id too long", func(c *Config) { c.ID = strings.Repeat("a", 65) }, Requirements{}, errdefs.ErrInvalidArgument},
		{"relative state dir", func(c *Config) { c.StateDir = "run/x" }, Requirements{}, errdefs.ErrInvalidArgument},
		{"unclean state dir", func(c *Config) { c.StateDir = "/run/../etc" }, Requirements{}, errdefs.ErrInvalidArgument},
		{"state dir too long for sockets", func(c *Config) { c.StateDir = "/" + strings.Repeat("d", 100) }, Requirements{}, errdefs.ErrInvalidArgument},
		{"missing kernel", func(c *Config) { c.Kernel = filepath.Join(dir, "nope") }, Requirements{Kernel: true}, errdefs.ErrInvalidArgument},
		{"kernel is a directory", func(c *Config) { c.Kernel = dir }, Requirements{Kernel: true}, errdefs.ErrInvalidArgument},
		{"negative vcpus", func(c *Config) { c.VCPUs = -1 }, Requirements{}, errdefs.ErrInvalidArgument},
		{"too many vcpus", func(c *Config) { c.VCPUs = MaxVCPUs + 1 }, Requirements{}, errdefs.ErrInvalidArgument},
		{"too little memory", func(c *Config) { c.MemoryMiB = 16 }, Requirements{}, errdefs.ErrInvalidArgument},
		{"unknown confidential mode", func(c *Config) { c.Confidential = "tdx" }, Requirements{}, errdefs.ErrInvalidArgument},
		{"newline in cmdline", func(c *Config) { c.Cmdline = "a\nb" }, Requirements{}, errdefs.ErrInvalidArgument},
		{"caller sets sim host data", func(c *Config) { c.Cmdline = "cocoon.sim_host_data=00" }, Requirements{}, errdefs.ErrInvalidArgument},
		{"caller sets attestation", func(c *Config) { c.VerityCmdline = "cocoon.attestation=none" }, Requirements{}, errdefs.ErrInvalidArgument},
		{"bad tag", func(c *Config) { c.SharedDirs = []SharedDir{{Tag: "a,b", HostPath: dir}} }, Requirements{}, errdefs.ErrInvalidArgument},
		{"duplicate tag", func(c *Config) { c.SharedDirs = []SharedDir{{Tag: "a", HostPath: dir}, {Tag: "a", HostPath: dir}} }, Requirements{}, errdefs.ErrInvalidArgument},
		{"share is a file", func(c *Config) { c.SharedDirs = []SharedDir{{Tag: "a", HostPath: kernel}} }, Requirements{}, errdefs.ErrInvalidArgument},
		{"share in a confidential vm", func(c *Config) {
			c.Confidential = ConfidentialSimulated
			c.SharedDirs = []SharedDir{{Tag: "a", HostPath: dir}}
		}, Requirements{}, errdefs.ErrInvalidArgument},
		{"missing disk", func(c *Config) { c.Disks = []Disk{{Path: filepath.Join(dir, "nope")}} }, Requirements{}, errdefs.ErrInvalidArgument},
		{"relative console log", func(c *Config) { c.ConsoleLog = "console.log" }, Requirements{}, errdefs.ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ok()
			tt.mod(&c)
			err := Validate(&c, tt.req)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("Validate error = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestValidateDefaults(t *testing.T) {
	c := Config{ID: "a", StateDir: "/run/cocoon/a"}
	if err := Validate(&c, Requirements{}); err != nil {
		t.Fatal(err)
	}
	if c.VCPUs != 1 || c.MemoryMiB != 512 || c.Confidential != ConfidentialNone || c.ConsoleLog != "/run/cocoon/a/console.log" {
		t.Fatalf("defaults: got vcpus %d, memory %d, confidential %q, console %q; want 1, 512, none, /run/cocoon/a/console.log",
			c.VCPUs, c.MemoryMiB, c.Confidential, c.ConsoleLog)
	}
}

func TestKernelCmdline(t *testing.T) {
	kernel, initrd, _ := files(t)
	hostData := [32]byte{0xde, 0xad}
	given := [48]byte{0xbe, 0xef}
	kSum, iSum := sha256.Sum256([]byte("vmlinuz")), sha256.Sum256([]byte("initrd"))
	computed := rootfs.SimulatedMeasurement(kSum, iSum, "console=ttyS0 root=/dev/vda tsc_early_khz=1 cocoon.attestation=simulated")
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"none", Config{Cmdline: " console=ttyS0 ", VerityCmdline: "root=/dev/vda"}, "console=ttyS0 root=/dev/vda tsc_early_khz=1"},
		{"snp", Config{Cmdline: "console=ttyS0", Confidential: ConfidentialSNP}, "console=ttyS0 tsc_early_khz=1 cocoon.attestation=snp"},
		{"simulated with a given measurement",
			Config{Cmdline: "console=ttyS0", Confidential: ConfidentialSimulated, HostData: hostData, SimMeasurement: given},
			"console=ttyS0 tsc_early_khz=1 cocoon.attestation=simulated cocoon.sim_host_data=" + hex.EncodeToString(hostData[:]) +
				" cocoon.sim_measurement=" + hex.EncodeToString(given[:])},
		{"simulated, measurement computed",
			Config{Cmdline: "console=ttyS0", VerityCmdline: "root=/dev/vda", Confidential: ConfidentialSimulated, Kernel: kernel, Initrd: initrd},
			"console=ttyS0 root=/dev/vda tsc_early_khz=1 cocoon.attestation=simulated cocoon.sim_host_data=" + strings.Repeat("0", 64) +
				" cocoon.sim_measurement=" + hex.EncodeToString(computed[:])},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := KernelCmdline(&tt.cfg, "tsc_early_khz=1")
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("cmdline:\ngot  %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestExitFromState(t *testing.T) {
	tests := []struct {
		name   string
		script string
		want   ExitInfo
	}{
		{"exit 0", "exit 0", ExitInfo{Reason: "exited with code 0", Code: 0}},
		{"exit 7", "exit 7", ExitInfo{Reason: "exited with code 7", Code: 7}},
		{"kill -9", "kill -9 $$", ExitInfo{Reason: "killed by signal 9", Code: -1, Signal: syscall.SIGKILL}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := StartProcess(exec.Command("/bin/sh", "-c", tt.script))
			if err != nil {
				t.Fatal(err)
			}
			<-p.Done()
			if got := p.Exit(); got != tt.want {
				t.Fatalf("exit = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestEscape(t *testing.T) {
	if got, want := Escape("/a,b/c,,d"), "/a,,b/c,,,,d"; got != want {
		t.Fatalf("Escape = %q, want %q", got, want)
	}
}
