// Package hostvmm holds what the VM launchers share: the sandbox
// configuration, the Sandbox and Launcher contracts, input validation and
// the kernel command line the launchers pass to the guest.
//
// The launchers live in the sub-packages: clh (cloud-hypervisor, the
// production VMM, SNP via IGVM), qemu (KVM or TCG, development and KVM hosts
// without cloud-hypervisor) and process (the agent as a host process, NO
// isolation, development only).
package hostvmm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"

	"github.com/containerd/errdefs"

	"github.com/cocoon-containers/cocoon/rootfs"
)

// Confidential modes.
const (
	ConfidentialNone      = "none"
	ConfidentialSimulated = "simulated"
	ConfidentialSNP       = "snp"
)

// AgentPort is the vsock port the agent listens on.
const AgentPort = 1024

// AgentChannel is the name of the virtio-serial port that carries the agent
// API when the VMM has no vsock.
const AgentChannel = "agent.channel.0"

// Config describes one sandbox. Every field comes from the host and is
// checked by Validate before a launcher uses it.
type Config struct {
	// ID names the sandbox (letters, digits, '.', '_', '-'; at most 64).
	ID string
	// StateDir holds the launcher's files (sockets, logs, pid files); it is
	// created when missing and everything the launcher put there is removed
	// by Cleanup. It must be an absolute path.
	StateDir string

	// Kernel and Initrd are the guest boot files; Image is an optional root
	// filesystem image (attached as the first disk) and VerityCmdline the
	// dm-verity parameters that go with it.
	Kernel, Initrd, Image string
	VerityCmdline         string
	// Cmdline is the base kernel command line. It must not carry the
	// cocoon.sim_* or cocoon.attestation parameters: the launcher adds them.
	Cmdline string

	VCPUs     int
	MemoryMiB int

	// Confidential is "none", "simulated" or "snp" (empty means none).
	Confidential string
	// HostData is the SNP HOST_DATA (the policy or initdata digest). With
	// "snp" it goes to the VMM, with "simulated" on the kernel command line.
	HostData [32]byte
	// SimMeasurement is the simulated launch measurement; when zero in
	// simulated mode the launcher computes rootfs.SimulatedMeasurement from
	// the kernel, the initrd and the base command line.
	SimMeasurement [48]byte
	// IGVM is the IGVM image cloud-hypervisor boots for SNP.
	IGVM string

	SharedDirs []SharedDir
	Disks      []Disk
	// Network, when set, gives the guest one network interface that
	// reaches only the listed host services.
	Network *Network

	// AgentBinary is the agent the process launcher runs.
	AgentBinary string
	// ConsoleLog receives the guest console; default StateDir/console.log.
	ConsoleLog string
}

// SharedDir is a host directory shared into the guest under Tag.
type SharedDir struct {
	Tag      string
	HostPath string
	ReadOnly bool
}

// Network is a private network between the guest and the host: the
// guest's interface (GuestMAC) gets GuestCIDR from the agent (the shim's
// UpdateInterface/UpdateRoutes), and every connection it opens is refused
// except to ServiceIP:GuestPort, which the VMM forwards to the host
// service HostAddr (a loopback address). Nothing else on the host or
// beyond is reachable. QEMU implements it with a restricted user-mode
// network; the process launcher shares the host's network instead.
type Network struct {
	Forwards []Forward
}

// Forward is one host service the guest may reach.
type Forward struct {
	GuestPort int
	HostAddr  string
}

// The guest side of Network.
const (
	GuestMAC    = "52:54:00:c0:c0:01"
	GuestCIDR   = "10.0.2.15/24"
	GatewayIP   = "10.0.2.2"
	ServiceIP   = "10.0.2.100"
	maxForwards = 16
)

// Disk is a raw block device or image file attached to the guest.
type Disk struct {
	Path     string
	ReadOnly bool
}

// ExitInfo tells why a sandbox ended.
type ExitInfo struct {
	// Reason is human-readable: "exited with code 1", "killed by signal 9",
	// "shutdown (guest-shutdown)", "stopped".
	Reason string
	// Code is the VMM's (or agent's) exit code, -1 when killed by a signal.
	Code int
	// Signal is the signal that killed it, 0 otherwise.
	Signal syscall.Signal
}

// Sandbox is a started VM (or agent process).
type Sandbox interface {
	// AgentAddr is the transport URL that reaches the agent.
	AgentAddr() string
	// DialAgent connects to the agent, retrying where the transport does.
	DialAgent(ctx context.Context) (net.Conn, error)
	// Wait blocks until the sandbox ended or ctx is done.
	Wait(ctx context.Context) (ExitInfo, error)
	// Stop asks for a graceful stop, then forces it after a timeout. It is
	// idempotent and returns once the sandbox has ended.
	Stop(ctx context.Context) error
	// Cleanup stops what still runs and removes every file and socket the
	// launcher made.
	Cleanup() error
	// ConsoleLog is the path of the guest console log.
	ConsoleLog() string
}

// Launcher starts sandboxes.
type Launcher interface {
	Start(ctx context.Context, cfg Config) (Sandbox, error)
}

var (
	idRE  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)
	tagRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,35}$`)
)

// Limits on host-supplied sizes.
const (
	MaxVCPUs     = 256
	MinMemoryMiB = 64
	MaxMemoryMiB = 1 << 20
	maxCmdline   = 2048
	// maxSocketPath is sun_path's size minus the terminating NUL.
	maxSocketPath = 107
)

// Requirements says which Config fields a launcher needs.
type Requirements struct {
	Kernel      bool // Kernel and Initrd must exist
	AgentBinary bool // AgentBinary must exist
}

// Validate checks cfg and fills defaults (VCPUs 1, MemoryMiB 512,
// Confidential none, ConsoleLog). It rejects anything that could escape
// the state directory or confuse the VMM's argument parser.
func Validate(cfg *Config, req Requirements) error {
	if !idRE.MatchString(cfg.ID) {
		return fmt.Errorf("sandbox id %q: want 1-64 of [A-Za-z0-9_.-] starting with a letter or digit: %w", cfg.ID, errdefs.ErrInvalidArgument)
	}
	if err := absClean("state dir", cfg.StateDir); err != nil {
		return err
	}
	// Launchers name their sockets "<name>.sock" (at most 12 characters) and
	// "virtiofsd-<tag>.sock" in the state dir.
	if n := len(cfg.StateDir) + len("/vsock.sock.x"); n > maxSocketPath {
		return fmt.Errorf("state dir %s: too long for unix socket paths (%d > %d): %w", cfg.StateDir, n, maxSocketPath, errdefs.ErrInvalidArgument)
	}
	if cfg.VCPUs == 0 {
		cfg.VCPUs = 1
	}
	if cfg.VCPUs < 1 || cfg.VCPUs > MaxVCPUs {
		return fmt.Errorf("vcpus %d: want 1..%d: %w", cfg.VCPUs, MaxVCPUs, errdefs.ErrInvalidArgument)
	}
	if cfg.MemoryMiB == 0 {
		cfg.MemoryMiB = 512
	}
	if cfg.MemoryMiB < MinMemoryMiB || cfg.MemoryMiB > MaxMemoryMiB {
		return fmt.Errorf("memory %d MiB: want %d..%d: %w", cfg.MemoryMiB, MinMemoryMiB, MaxMemoryMiB, errdefs.ErrInvalidArgument)
	}
	switch cfg.Confidential {
	case "":
		cfg.Confidential = ConfidentialNone
	case ConfidentialNone, ConfidentialSimulated, ConfidentialSNP:
	default:
		return fmt.Errorf("confidential mode %q: want none, simulated or snp: %w", cfg.Confidential, errdefs.ErrInvalidArgument)
	}
	if req.Kernel {
		if err := regularFile("kernel", cfg.Kernel); err != nil {
			return err
		}
		if err := regularFile("initrd", cfg.Initrd); err != nil {
			return err
		}
	}
	if cfg.Image != "" {
		if err := existing("image", cfg.Image); err != nil {
			return err
		}
	}
	if cfg.IGVM != "" {
		if err := regularFile("igvm", cfg.IGVM); err != nil {
			return err
		}
	}
	if req.AgentBinary {
		if err := regularFile("agent binary", cfg.AgentBinary); err != nil {
			return err
		}
	}
	for _, s := range []struct{ name, v string }{{"cmdline", cfg.Cmdline}, {"verity cmdline", cfg.VerityCmdline}} {
		if len(s.v) > maxCmdline || strings.ContainsAny(s.v, "\x00\n\r") {
			return fmt.Errorf("%s: too long or has control characters: %w", s.name, errdefs.ErrInvalidArgument)
		}
		for _, f := range strings.Fields(s.v) {
			if strings.HasPrefix(f, "cocoon.sim_") || strings.HasPrefix(f, "cocoon.attestation=") {
				return fmt.Errorf("%s: %q is set by the launcher, not the caller: %w", s.name, f, errdefs.ErrInvalidArgument)
			}
		}
	}
	seen := map[string]bool{}
	for _, d := range cfg.SharedDirs {
		if !tagRE.MatchString(d.Tag) {
			return fmt.Errorf("shared dir tag %q: want 1-36 of [A-Za-z0-9_.-]: %w", d.Tag, errdefs.ErrInvalidArgument)
		}
		if seen[d.Tag] {
			return fmt.Errorf("shared dir tag %q used twice: %w", d.Tag, errdefs.ErrInvalidArgument)
		}
		seen[d.Tag] = true
		if n := len(VirtiofsdSocket(cfg.StateDir, d.Tag)); n > maxSocketPath {
			return fmt.Errorf("shared dir %s: socket path too long (%d > %d): %w", d.Tag, n, maxSocketPath, errdefs.ErrInvalidArgument)
		}
		if err := absClean("shared dir "+d.Tag, d.HostPath); err != nil {
			return err
		}
		st, err := os.Stat(d.HostPath)
		if err != nil || !st.IsDir() {
			return fmt.Errorf("shared dir %s: %s is not a directory: %w", d.Tag, d.HostPath, errdefs.ErrInvalidArgument)
		}
	}
	if cfg.Confidential != ConfidentialNone && len(cfg.SharedDirs) > 0 {
		return fmt.Errorf("shared directories are not allowed in a confidential sandbox: %w", errdefs.ErrInvalidArgument)
	}
	for i, d := range cfg.Disks {
		if err := existing(fmt.Sprintf("disk %d", i), d.Path); err != nil {
			return err
		}
	}
	if n := cfg.Network; n != nil {
		if len(n.Forwards) > maxForwards {
			return fmt.Errorf("network: %d forwards, at most %d: %w", len(n.Forwards), maxForwards, errdefs.ErrInvalidArgument)
		}
		ports := map[int]bool{}
		for _, f := range n.Forwards {
			if f.GuestPort < 1 || f.GuestPort > 65535 || ports[f.GuestPort] {
				return fmt.Errorf("network forward: guest port %d out of range or used twice: %w", f.GuestPort, errdefs.ErrInvalidArgument)
			}
			ports[f.GuestPort] = true
			ap, err := netip.ParseAddrPort(f.HostAddr)
			if err != nil || !ap.Addr().IsLoopback() || ap.Port() == 0 {
				return fmt.Errorf("network forward to %q: want a loopback ip:port on the host: %w", f.HostAddr, errdefs.ErrInvalidArgument)
			}
		}
	}
	if cfg.ConsoleLog == "" {
		cfg.ConsoleLog = filepath.Join(cfg.StateDir, "console.log")
	} else if err := absClean("console log", cfg.ConsoleLog); err != nil {
		return err
	}
	return nil
}

// VirtiofsdSocket is where a launcher puts the vhost-user socket of the
// virtiofsd serving shared directory tag.
func VirtiofsdSocket(stateDir, tag string) string {
	return filepath.Join(stateDir, "virtiofsd-"+tag+".sock")
}

func absClean(what, p string) error {
	if p == "" || !filepath.IsAbs(p) || filepath.Clean(p) != p || strings.ContainsAny(p, "\x00\n") {
		return fmt.Errorf("%s %q: want a clean absolute path: %w", what, p, errdefs.ErrInvalidArgument)
	}
	return nil
}

func existing(what, p string) error {
	if err := absClean(what, p); err != nil {
		return err
	}
	if _, err := os.Stat(p); err != nil {
		return fmt.Errorf("%s: %w", what, errdefs.ErrInvalidArgument.WithMessage(err.Error()))
	}
	return nil
}

func regularFile(what, p string) error {
	if err := absClean(what, p); err != nil {
		return err
	}
	st, err := os.Stat(p)
	if err != nil {
		return fmt.Errorf("%s: %v: %w", what, err, errdefs.ErrInvalidArgument)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s %s: not a regular file: %w", what, p, errdefs.ErrInvalidArgument)
	}
	return nil
}

// KernelCmdline is the command line the guest boots with: the base command
// line, the verity parameters, any launcher-specific extra parameters
// (tsc_early_khz under TCG), cocoon.attestation for a confidential mode and,
// in simulated mode, cocoon.sim_host_data and cocoon.sim_measurement (hex).
// When cfg leaves SimMeasurement zero it is computed like a real SNP launch
// digest would be: over the kernel, the initrd and everything on the booted
// command line except the cocoon.sim_* parameters
// (rootfs.SimulatedMeasurement). A reference value from a rootfs manifest
// matches only when the manifest's command line is that same line; a caller
// holding a reference value passes it in SimMeasurement instead.
func KernelCmdline(cfg *Config, extra ...string) (string, error) {
	var parts []string
	for _, s := range append([]string{cfg.Cmdline, cfg.VerityCmdline}, extra...) {
		if s = strings.TrimSpace(s); s != "" {
			parts = append(parts, s)
		}
	}
	switch cfg.Confidential {
	case ConfidentialSimulated:
		parts = append(parts, rootfs.SimulatedAttestationParam)
	case ConfidentialSNP:
		parts = append(parts, "cocoon.attestation=snp")
	}
	base := strings.Join(parts, " ")
	switch cfg.Confidential {
	case ConfidentialSimulated:
		m := cfg.SimMeasurement
		if m == ([48]byte{}) {
			k, err := fileSHA256(cfg.Kernel)
			if err != nil {
				return "", fmt.Errorf("simulated measurement: %w", err)
			}
			i, err := fileSHA256(cfg.Initrd)
			if err != nil {
				return "", fmt.Errorf("simulated measurement: %w", err)
			}
			m = rootfs.SimulatedMeasurement(k, i, base)
		}
		return strings.TrimSpace(base + " cocoon.sim_host_data=" +
			hex.EncodeToString(cfg.HostData[:]) + " cocoon.sim_measurement=" + hex.EncodeToString(m[:])), nil
	}
	return base, nil
}

func fileSHA256(p string) ([32]byte, error) {
	var sum [32]byte
	f, err := os.Open(p)
	if err != nil {
		return sum, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return sum, fmt.Errorf("hash %s: %w", p, err)
	}
	copy(sum[:], h.Sum(nil))
	return sum, nil
}

// ExitFromState turns a finished process's state into an ExitInfo.
func ExitFromState(ps *os.ProcessState) ExitInfo {
	if ps == nil {
		return ExitInfo{Reason: "unknown", Code: -1}
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return ExitInfo{Reason: fmt.Sprintf("killed by signal %d", int(ws.Signal())), Code: -1, Signal: ws.Signal()}
	}
	return ExitInfo{Reason: fmt.Sprintf("exited with code %d", ps.ExitCode()), Code: ps.ExitCode()}
}

// Escape doubles the commas in a value for QEMU-style "key=value,..."
// option strings.
func Escape(v string) string { return strings.ReplaceAll(v, ",", ",,") }
