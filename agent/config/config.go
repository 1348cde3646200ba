// Package config reads the guest agent's configuration from the initrd's
// /etc/cocoon/agent.toml, the kernel command line and the environment, in
// that order of increasing precedence.
package config

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/containerd/errdefs"

	"github.com/cocoon-containers/cocoon/kbs-client/protocol"
	"github.com/cocoon-containers/cocoon/rpc/transport"
)

// Default locations in the guest.
const (
	DefaultFile    = "/etc/cocoon/agent.toml"
	DefaultCmdline = "/proc/cmdline"
)

// Attestation modes.
const (
	AttestationSNP       = "snp"
	AttestationSimulated = "simulated"
	AttestationNone      = "none"
)

// Limits on host-controlled input.
const (
	maxCmdlineBytes = 64 << 10
	maxFileBytes    = 64 << 10
)

// Config is the agent's configuration.
type Config struct {
	// ServerAddr is the transport address the agent serves on.
	ServerAddr string
	// LogLevel is the minimum level logged.
	LogLevel slog.Level
	// DebugConsole asks for a shell on the console (agent.debug_console).
	DebugConsole bool
	// Attestation is "snp", "simulated" or "none".
	Attestation string
	// SimHostData is the simulated SNP report's HOST_DATA (32 bytes or nil).
	SimHostData []byte
	// SimMeasurement is the simulated SNP report's MEASUREMENT (48 bytes or nil).
	SimMeasurement []byte
	// KBSURL is the key broker service the workload endpoint talks to.
	KBSURL string
	// RunDir holds container bundles (default /run/cocoon).
	RunDir string
	// CgroupParent is the cgroup containers are created under (default /cocoon).
	CgroupParent string
	// DefaultPolicy is the Rego policy in force until SetPolicy (default
	// /etc/cocoon/default-policy.rego, which the rootfs builder writes).
	DefaultPolicy string
	// RootfsVerity, when set, is the dm-verity protected root filesystem
	// image the agent mounts read-only (cocoon.rootfs_verity* keys, which
	// the rootfs builder puts on the measured command line).
	RootfsVerity *VerityRootfs
	// ImagePolicy names the signature policy for guest pulls
	// (containers-policy.json): a kbs:///repo/type/tag resource or an
	// absolute path in the guest image. Initdata's cdh.toml
	// image_security_policy_uri takes precedence.
	ImagePolicy string
	// ImageRegistryAuth names registry credentials (docker config.json)
	// the same way; cdh.toml's authenticated_registry_credentials_uri
	// takes precedence.
	ImageRegistryAuth string
	// ImageInsecureRegistries may be reached over plain HTTP by guest
	// pulls (comma-separated host[:port] list).
	ImageInsecureRegistries []string
	// ImageRegistryAddrs says where guest pulls dial a registry: its
	// host:port as image names write it -> the ip:port the guest reaches
	// it at (a launcher's forwarded service address). The name is still
	// what TLS and the signature policy check.
	ImageRegistryAddrs map[string]string
	// EndpointAddr is where the workload endpoint listens (a loopback
	// ip:port; default 127.0.0.1:8006); "off" serves none while the KBS
	// still backs guest pulls (an agent sharing a host's network).
	EndpointAddr string
}

// EndpointOff in EndpointAddr disables the workload endpoint.
const EndpointOff = "off"

// VerityRootfs describes the verity-protected image: data on /dev/vda, the
// veritysetup-format hash tree on /dev/vdb.
type VerityRootfs struct {
	RootHash []byte
	Salt     []byte
	Blocks   uint64
	FSType   string
}

// DefaultPolicyFile is where the rootfs builder puts the default policy.
const DefaultPolicyFile = "/etc/cocoon/default-policy.rego"

// envKeys are the configuration keys the environment may override, as
// COCOON_<KEY> (COCOON_AGENT_SERVER_ADDR and KATA_AGENT_SERVER_ADDR for
// the address).
var envKeys = []string{"log", "attestation", "sim_host_data", "sim_measurement", "kbs_url",
	"run_dir", "cgroup_parent", "default_policy", "image_policy", "image_registry_auth", "image_insecure_registries", "image_registry_addrs", "endpoint_addr"}

// Default returns the configuration used when nothing overrides it.
func Default() Config {
	return Config{
		ServerAddr:    transport.DefaultGuestAddr,
		LogLevel:      slog.LevelInfo,
		Attestation:   AttestationNone,
		RunDir:        "/run/cocoon",
		CgroupParent:  "/cocoon",
		DefaultPolicy: DefaultPolicyFile,
	}
}

// fileConfig mirrors the command-line keys without the "cocoon." prefix.
type fileConfig struct {
	ServerAddr     *string `toml:"server_addr"`
	LogLevel       *string `toml:"log_level"`
	Log            *string `toml:"log"`
	DebugConsole   *bool   `toml:"debug_console"`
	Attestation    *string `toml:"attestation"`
	SimHostData    *string `toml:"sim_host_data"`
	SimMeasurement *string `toml:"sim_measurement"`
	KBSURL         *string `toml:"kbs_url"`
	RunDir         *string `toml:"run_dir"`
	CgroupParent   *string `toml:"cgroup_parent"`
	DefaultPolicy  *string `toml:"default_policy"`
	ImagePolicy    *string `toml:"image_policy"`
	ImageAuth      *string `toml:"image_registry_auth"`
	ImageInsecure  *string `toml:"image_insecure_registries"`
	EndpointAddr   *string `toml:"endpoint_addr"`
}

// Sources holds the raw inputs Parse combines.
type Sources struct {
	// File is the content of agent.toml (nil when absent).
	File []byte
	// Cmdline is the kernel command line.
	Cmdline string
	// Getenv looks up environment variables; nil means none are set.
	Getenv func(string) string
}

// Load reads the configuration of the running system: the TOML file at file
// (missing is fine), the kernel command line at cmdline and the process
// environment.
func Load(file, cmdline string) (Config, error) {
	var src Sources
	b, err := readBounded(file, maxFileBytes)
	switch {
	case err == nil:
		src.File = b
	case errors.Is(err, fs.ErrNotExist):
	default:
		return Config{}, fmt.Errorf("read agent config: %w", err)
	}
	b, err = readBounded(cmdline, maxCmdlineBytes)
	switch {
	case err == nil:
		src.Cmdline = string(b)
	case errors.Is(err, fs.ErrNotExist):
	default:
		return Config{}, fmt.Errorf("read kernel command line: %w", err)
	}
	src.Getenv = os.Getenv
	return Parse(src)
}

func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes: %w", path, limit, errdefs.ErrInvalidArgument)
	}
	return b, nil
}

// Parse combines the sources: defaults, then the file, then the kernel
// command line (agent.* keys, then cocoon.* keys), then the environment.
func Parse(src Sources) (Config, error) {
	cfg := Default()
	raw := map[string]string{}
	var debugConsole *bool

	if len(src.File) > 0 {
		var fc fileConfig
		md, err := toml.Decode(string(src.File), &fc)
		if err != nil {
			return Config{}, fmt.Errorf("parse agent config: %w: %w", err, errdefs.ErrInvalidArgument)
		}
		if undecoded := md.Undecoded(); len(undecoded) > 0 {
			return Config{}, fmt.Errorf("agent config: unknown key %q: %w", undecoded[0].String(), errdefs.ErrInvalidArgument)
		}
		set := func(key string, v *string) {
			if v != nil {
				raw[key] = *v
			}
		}
		set("server_addr", fc.ServerAddr)
		set("log", fc.Log)
		set("log", fc.LogLevel)
		set("attestation", fc.Attestation)
		set("sim_host_data", fc.SimHostData)
		set("sim_measurement", fc.SimMeasurement)
		set("kbs_url", fc.KBSURL)
		set("run_dir", fc.RunDir)
		set("cgroup_parent", fc.CgroupParent)
		set("default_policy", fc.DefaultPolicy)
		set("image_policy", fc.ImagePolicy)
		set("image_registry_auth", fc.ImageAuth)
		set("image_insecure_registries", fc.ImageInsecure)
		set("endpoint_addr", fc.EndpointAddr)
		debugConsole = fc.DebugConsole
	}

	params, err := SplitCmdline(src.Cmdline)
	if err != nil {
		return Config{}, err
	}
	// agent.* first so that cocoon.* wins when both are given.
	for _, prefix := range []string{"agent.", "cocoon."} {
		for _, p := range params {
			key, ok := strings.CutPrefix(p.Key, prefix)
			if !ok {
				continue
			}
			switch key {
			case "debug_console":
				on := !p.HasValue || p.Value == "1" || p.Value == "true" || p.Value == "on"
				debugConsole = &on
			case "log_level":
				raw["log"] = p.Value
			default:
				if prefix == "agent." && key != "server_addr" && key != "log" {
					// Other Kata agent.* keys mean nothing to us.
					continue
				}
				raw[key] = p.Value
			}
		}
	}

	if src.Getenv != nil {
		for _, name := range []string{"KATA_AGENT_SERVER_ADDR", "COCOON_AGENT_SERVER_ADDR"} {
			if v := src.Getenv(name); v != "" {
				raw["server_addr"] = v
			}
		}
		for _, key := range envKeys {
			if v := src.Getenv("COCOON_" + strings.ToUpper(key)); v != "" {
				raw[key] = v
			}
		}
	}

	if debugConsole != nil {
		cfg.DebugConsole = *debugConsole
	}
	for key, v := range raw {
		if err := cfg.apply(key, v); err != nil {
			return Config{}, err
		}
	}
	if r := cfg.RootfsVerity; r != nil && (r.RootHash == nil || r.Blocks == 0) {
		return Config{}, fmt.Errorf("config: cocoon.rootfs_verity needs both the root hash and cocoon.rootfs_verity_blocks: %w", errdefs.ErrInvalidArgument)
	}
	return cfg, nil
}

func (c *Config) apply(key, v string) error {
	bad := func(what string) error {
		return fmt.Errorf("config %s=%q: %s: %w", key, v, what, errdefs.ErrInvalidArgument)
	}
	switch key {
	case "server_addr":
		if _, err := transport.Parse(v); err != nil {
			return fmt.Errorf("config server_addr: %w", err)
		}
		c.ServerAddr = v
	case "log":
		lvl, ok := parseLevel(v)
		if !ok {
			return bad("want trace, debug, info, warn, error or critical")
		}
		c.LogLevel = lvl
	case "attestation":
		switch v {
		case AttestationSNP, AttestationSimulated, AttestationNone:
			c.Attestation = v
		default:
			return bad("want snp, simulated or none")
		}
	case "sim_host_data":
		b, err := hex.DecodeString(v)
		if err != nil || len(b) != 32 {
			return bad("want 64 hex digits")
		}
		c.SimHostData = b
	case "sim_measurement":
		b, err := hex.DecodeString(v)
		if err != nil || len(b) != 48 {
			return bad("want 96 hex digits")
		}
		c.SimMeasurement = b
	case "kbs_url":
		u, err := url.Parse(v)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return bad("want an http or https URL")
		}
		c.KBSURL = v
	case "run_dir", "cgroup_parent", "default_policy":
		if !filepath.IsAbs(v) || filepath.Clean(v) != v || v == "/" {
			return bad("want an absolute, clean path other than /")
		}
		switch key {
		case "run_dir":
			c.RunDir = v
		case "cgroup_parent":
			c.CgroupParent = v
		default:
			c.DefaultPolicy = v
		}
	case "rootfs_verity", "rootfs_verity_salt", "rootfs_verity_blocks", "rootfs_fstype":
		if c.RootfsVerity == nil {
			c.RootfsVerity = &VerityRootfs{FSType: "erofs"}
		}
		r := c.RootfsVerity
		switch key {
		case "rootfs_verity":
			b, err := hex.DecodeString(v)
			if err != nil || len(b) != 32 {
				return bad("want a 64-hex-digit sha256 root hash")
			}
			r.RootHash = b
		case "rootfs_verity_salt":
			b, err := hex.DecodeString(v)
			if err != nil || len(b) > 256 {
				return bad("want at most 256 hex bytes")
			}
			r.Salt = b
		case "rootfs_verity_blocks":
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil || n == 0 || n > 1<<40 {
				return bad("want a positive number of 4096-byte blocks")
			}
			r.Blocks = n
		default:
			if v != "erofs" && v != "ext4" {
				return bad("want erofs or ext4")
			}
			r.FSType = v
		}
	case "image_policy", "image_registry_auth":
		if err := checkResourceOrPath(v); err != nil {
			return bad(err.Error())
		}
		if key == "image_policy" {
			c.ImagePolicy = v
		} else {
			c.ImageRegistryAuth = v
		}
	case "image_registry_addrs":
		c.ImageRegistryAddrs = map[string]string{}
		for _, pair := range strings.Split(v, ",") {
			name, addr, ok := strings.Cut(pair, "=")
			if _, _, err := net.SplitHostPort(name); !ok || err != nil || strings.ContainsAny(name, "/@ \t") {
				return bad("want name:port=ip:port,...")
			}
			if ap, err := netip.ParseAddrPort(addr); err != nil || ap.Port() == 0 {
				return bad("want name:port=ip:port,...")
			}
			c.ImageRegistryAddrs[name] = addr
		}
	case "endpoint_addr":
		if v != EndpointOff {
			ap, err := netip.ParseAddrPort(v)
			if err != nil || !ap.Addr().IsLoopback() {
				return bad("want a loopback ip:port, or off")
			}
		}
		c.EndpointAddr = v
	case "image_insecure_registries":
		c.ImageInsecureRegistries = nil
		for _, r := range strings.Split(v, ",") {
			if r == "" || len(r) > 255 || strings.ContainsAny(r, "/@ \t") {
				return bad("want a comma-separated list of host or host:port")
			}
			c.ImageInsecureRegistries = append(c.ImageInsecureRegistries, r)
		}
	default:
		// Unknown cocoon.* keys belong to other components (rootfs, init).
	}
	return nil
}

// checkResourceOrPath accepts a kbs:///repo/type/tag URI or an absolute,
// clean path.
func checkResourceOrPath(v string) error {
	if _, ok, err := protocol.ResourceURIPath(v); ok {
		if err != nil {
			return fmt.Errorf("want kbs:///repo/type/tag: %v", err)
		}
		return nil
	}
	if !filepath.IsAbs(v) || filepath.Clean(v) != v {
		return errors.New("want kbs:///repo/type/tag or an absolute, clean path")
	}
	return nil
}

func parseLevel(s string) (slog.Level, bool) {
	switch strings.ToLower(s) {
	case "trace", "debug":
		return slog.LevelDebug, true
	case "info":
		return slog.LevelInfo, true
	case "warn", "warning":
		return slog.LevelWarn, true
	case "error", "critical", "fatal":
		return slog.LevelError, true
	}
	return 0, false
}

// Param is one kernel command-line parameter.
type Param struct {
	Key      string
	Value    string
	HasValue bool
}

// SplitCmdline splits a kernel command line into parameters the way the
// kernel does: whitespace separates, double quotes group, and "--" ends the
// kernel's parameters (the rest belongs to init).
func SplitCmdline(s string) ([]Param, error) {
	if len(s) > maxCmdlineBytes {
		return nil, fmt.Errorf("kernel command line longer than %d bytes: %w", maxCmdlineBytes, errdefs.ErrInvalidArgument)
	}
	var (
		params []Param
		tok    strings.Builder
		inTok  bool
		quoted bool
	)
	flush := func() {
		if !inTok {
			return
		}
		t := tok.String()
		tok.Reset()
		inTok = false
		k, v, has := strings.Cut(t, "=")
		params = append(params, Param{Key: k, Value: v, HasValue: has})
	}
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case ch == '"':
			quoted = !quoted
			inTok = true
		case !quoted && (ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r'):
			if inTok && tok.String() == "--" {
				tok.Reset()
				inTok = false
				return params, nil
			}
			flush()
		default:
			tok.WriteByte(ch)
			inTok = true
		}
	}
	if quoted {
		return nil, fmt.Errorf("kernel command line: unterminated quote: %w", errdefs.ErrInvalidArgument)
	}
	if inTok && tok.String() == "--" {
		return params, nil
	}
	flush()
	return params, nil
}
