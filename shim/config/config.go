// Package config reads the shim's runtime configuration: a TOML file whose
// path comes from containerd's runtime options (ConfigPath) or defaults to
// /etc/cocoon/configuration.toml.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/containerd/errdefs"
)

// DefaultPath is read when containerd passes no ConfigPath.
const DefaultPath = "/etc/cocoon/configuration.toml"

// maxFileSize bounds the configuration file; anything larger is a mistake.
const maxFileSize = 1 << 20

// Launchers the shim knows by name.
const (
	LauncherCloudHypervisor = "clh"
	LauncherQEMU            = "qemu"
	LauncherProcess         = "process"
)

// Confidential modes.
const (
	ConfidentialNone      = "none"
	ConfidentialSimulated = "simulated"
	ConfidentialSNP       = "snp"
)

// Shared filesystem modes for the sandbox's shared directory.
const (
	SharedFSVirtioFS = "virtio-fs"
	SharedFS9P       = "9p"
	SharedFSNone     = "none"
)

// Config is the whole runtime configuration.
type Config struct {
	Sandbox  Sandbox `toml:"sandbox"`
	KBS      KBS     `toml:"kbs"`
	LogLevel string  `toml:"log_level"`
}

// Sandbox describes how a pod's VM is launched.
type Sandbox struct {
	Launcher string `toml:"launcher"`
	Kernel   string `toml:"kernel"`
	Initrd   string `toml:"initrd"`
	Image    string `toml:"image"`
	// IGVM is the image cloud-hypervisor boots an SNP guest from.
	IGVM         string `toml:"igvm"`
	VCPUs        int    `toml:"vcpus"`
	MemoryMiB    int    `toml:"memory_mib"`
	Confidential string `toml:"confidential"`
	// Agent is the agent binary for the process launcher.
	Agent string `toml:"agent"`
	// AgentDialTimeout bounds the wait for the agent to answer Health.
	AgentDialTimeout Duration `toml:"agent_dial_timeout"`
	// SharedFS shares the per-sandbox directory with the guest; the default
	// depends on the launcher and the confidential mode.
	SharedFS string `toml:"shared_fs"`
	// KernelParams are appended to the guest kernel command line.
	KernelParams string `toml:"kernel_params"`
	// StateDir holds per-sandbox state (sockets, shared directory, logs).
	StateDir string `toml:"state_dir"`
	// ImagePull says where container images come from: "host" (default)
	// gives the guest the rootfs containerd unpacked (a share, or verity
	// layers); "guest" has the agent pull the image a container's
	// io.kubernetes.cri.image-name annotation names, inside the guest.
	// Containers without that annotation (the pause container) keep the
	// host path.
	ImagePull string `toml:"image_pull"`
	// ImageRegistries are the registries (host:port as image names write
	// them) guest pulls reach. Under QEMU the guest network reaches only
	// forwarded host services: each must be a loopback ip:port on the
	// host, forwarded into the guest. The process launcher and
	// cloud-hypervisor use the node's network.
	ImageRegistries []string `toml:"image_registries"`
	// LayerCacheDir keeps the verity images of image layers for every pod
	// to reuse (default: .layers in StateDir, which is often a tmpfs; a
	// directory on disk saves memory).
	LayerCacheDir string `toml:"layer_cache_dir"`
}

// Image pull modes.
const (
	ImagePullHost  = "host"
	ImagePullGuest = "guest"
)

// KBS tells the guest where to fetch secrets.
type KBS struct {
	URL string `toml:"url"`
	// CA is a PEM file with the KBS's certificate authority.
	CA string `toml:"ca"`
}

// Duration is a time.Duration written as a Go duration string ("60s").
type Duration struct{ time.Duration }

// UnmarshalText parses a duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// MarshalText writes the duration as a string.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.Duration.String()), nil }

// Default is the configuration used for keys the file leaves out.
func Default() Config {
	return Config{
		Sandbox: Sandbox{
			Launcher:     LauncherQEMU,
			Kernel:       "/usr/share/cocoon/vmlinuz",
			Initrd:       "/usr/share/cocoon/cocoon-initrd.img",
			VCPUs:        1,
			MemoryMiB:    512,
			Confidential: ConfidentialNone,
			StateDir:     "/run/cocoon/shim",
		},
		LogLevel: "info",
	}
}

// Resolve picks the file to read: the runtime options' path when set,
// otherwise DefaultPath.
func Resolve(optionsPath string) string {
	if optionsPath != "" {
		return optionsPath
	}
	return DefaultPath
}

// Load reads the file at path. A missing DefaultPath yields the defaults; a
// missing file that was asked for explicitly is an error.
func Load(path string) (Config, error) {
	if path == "" {
		path = DefaultPath
	}
	b, err := readBounded(path)
	if err != nil {
		if path == DefaultPath && errors.Is(err, fs.ErrNotExist) {
			c := Default()
			return c, c.finish()
		}
		return Config{}, fmt.Errorf("read runtime configuration %s: %w", path, err)
	}
	c, err := Parse(b)
	if err != nil {
		return Config{}, fmt.Errorf("runtime configuration %s: %w", path, err)
	}
	return c, nil
}

func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var buf bytes.Buffer
	n, err := buf.ReadFrom(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, err
	}
	if n > maxFileSize {
		return nil, fmt.Errorf("file larger than %d bytes: %w", maxFileSize, errdefs.ErrInvalidArgument)
	}
	return buf.Bytes(), nil
}

// Parse decodes TOML over the defaults and validates the result. Unknown
// keys are errors so that typos do not silently fall back to defaults.
func Parse(b []byte) (Config, error) {
	c := Default()
	md, err := toml.Decode(string(b), &c)
	if err != nil {
		return Config{}, fmt.Errorf("parse: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if und := md.Undecoded(); len(und) > 0 {
		return Config{}, fmt.Errorf("unknown key %q: %w", und[0].String(), errdefs.ErrInvalidArgument)
	}
	if err := c.finish(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// finish fills launcher-dependent defaults and validates.
func (c *Config) finish() error {
	s := &c.Sandbox
	if s.AgentDialTimeout.Duration == 0 {
		s.AgentDialTimeout.Duration = 30 * time.Second
		if s.Confidential == ConfidentialSNP {
			s.AgentDialTimeout.Duration = 90 * time.Second
		}
	}
	if s.ImagePull == "" {
		s.ImagePull = ImagePullHost
	}
	if s.SharedFS == "" {
		switch {
		case s.Launcher == LauncherProcess:
			s.SharedFS = SharedFSNone
		case s.Confidential != ConfidentialNone:
			s.SharedFS = SharedFSNone
		case s.Launcher == LauncherQEMU:
			s.SharedFS = SharedFS9P
		default:
			s.SharedFS = SharedFSVirtioFS
		}
	}
	return c.Validate()
}

// Validate checks every value; the file is host input like any other.
func (c Config) Validate() error {
	s := c.Sandbox
	bad := func(format string, args ...any) error {
		return fmt.Errorf(format+": %w", append(args, errdefs.ErrInvalidArgument)...)
	}
	switch s.Launcher {
	case LauncherCloudHypervisor, LauncherQEMU, LauncherProcess:
	default:
		return bad("sandbox.launcher %q: want clh, qemu or process", s.Launcher)
	}
	switch s.Confidential {
	case ConfidentialNone, ConfidentialSimulated, ConfidentialSNP:
	default:
		return bad("sandbox.confidential %q: want none, simulated or snp", s.Confidential)
	}
	switch s.SharedFS {
	case SharedFSVirtioFS, SharedFS9P, SharedFSNone:
	default:
		return bad("sandbox.shared_fs %q: want virtio-fs, 9p or none", s.SharedFS)
	}
	switch s.ImagePull {
	case ImagePullHost, ImagePullGuest:
	default:
		return bad("sandbox.image_pull %q: want host or guest", s.ImagePull)
	}
	if len(s.ImageRegistries) > 8 {
		return bad("sandbox.image_registries: %d registries, at most 8", len(s.ImageRegistries))
	}
	for _, r := range s.ImageRegistries {
		if _, _, err := net.SplitHostPort(r); err != nil || strings.ContainsAny(r, "/@ \t\n=,") {
			return bad("sandbox.image_registries %q: want host:port", r)
		}
	}
	if s.Launcher == LauncherProcess && s.Confidential == ConfidentialSNP {
		return bad("sandbox.confidential snp needs a VM launcher, not process")
	}
	if s.Confidential != ConfidentialNone && s.SharedFS != SharedFSNone {
		return bad("sandbox.shared_fs %s: a confidential sandbox shares no directory with the host", s.SharedFS)
	}
	if s.VCPUs < 1 || s.VCPUs > 256 {
		return bad("sandbox.vcpus %d: want 1..256", s.VCPUs)
	}
	if s.MemoryMiB < 64 || s.MemoryMiB > 1<<20 {
		return bad("sandbox.memory_mib %d: want 64..1048576", s.MemoryMiB)
	}
	if s.AgentDialTimeout.Duration < 0 || s.AgentDialTimeout.Duration > 30*time.Minute {
		return bad("sandbox.agent_dial_timeout %s: want 0..30m", s.AgentDialTimeout.Duration)
	}
	for key, p := range map[string]string{
		"sandbox.kernel": s.Kernel, "sandbox.initrd": s.Initrd, "sandbox.image": s.Image, "sandbox.igvm": s.IGVM,
		"sandbox.agent": s.Agent, "sandbox.state_dir": s.StateDir, "kbs.ca": c.KBS.CA,
		"sandbox.layer_cache_dir": s.LayerCacheDir,
	} {
		if p != "" && (!filepath.IsAbs(p) || filepath.Clean(p) != p) {
			return bad("%s %q: want a clean absolute path", key, p)
		}
	}
	if s.StateDir == "" {
		return bad("sandbox.state_dir is empty")
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return bad("log_level %q: want debug, info, warn or error", c.LogLevel)
	}
	return nil
}
