package sandbox

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/cocoon-containers/cocoon/hostvmm"
	"github.com/cocoon-containers/cocoon/hostvmm/clh"
	"github.com/cocoon-containers/cocoon/hostvmm/process"
	"github.com/cocoon-containers/cocoon/hostvmm/qemu"
	"github.com/cocoon-containers/cocoon/shim/config"
	"github.com/containerd/errdefs"
)

// vmmStarter is the launcher side of package hostvmm.
type vmmStarter interface {
	Start(ctx context.Context, cfg hostvmm.Config) (hostvmm.Sandbox, error)
}

// NewLauncher returns the launcher the configuration names, built on the
// hostvmm launchers.
func NewLauncher(cfg config.Config, log *slog.Logger) (Launcher, error) {
	var st vmmStarter
	switch cfg.Sandbox.Launcher {
	case config.LauncherProcess:
		st = &process.Launcher{Logger: log}
	case config.LauncherQEMU:
		st = &qemu.Launcher{Logger: log}
	case config.LauncherCloudHypervisor:
		st = &clh.Launcher{Logger: log}
	default:
		return nil, fmt.Errorf("launcher %q: %w", cfg.Sandbox.Launcher, errdefs.ErrInvalidArgument)
	}
	return &vmmLauncher{starter: st}, nil
}

type vmmLauncher struct {
	starter vmmStarter
}

// DefaultAgentBinary is the agent the process launcher runs when the
// configuration names none: cocoon-agent next to the shim binary.
func DefaultAgentBinary() string {
	self, err := os.Executable()
	if err != nil {
		return ""
	}
	return filepath.Join(filepath.Dir(self), "cocoon-agent")
}

// VMMConfig translates a launch spec into the hostvmm configuration.
func VMMConfig(spec LaunchSpec) hostvmm.Config {
	sc := spec.Config.Sandbox
	var params []string
	if sc.KernelParams != "" {
		params = append(params, sc.KernelParams)
	}
	if spec.KBSURL != "" {
		params = append(params, "cocoon.kbs_url="+spec.KBSURL)
	}
	if spec.RegistryAddrs != "" {
		params = append(params, "cocoon.image_registry_addrs="+spec.RegistryAddrs)
	}
	c := hostvmm.Config{
		ID:           spec.ID,
		StateDir:     filepath.Join(spec.StateDir, "vm"),
		Kernel:       sc.Kernel,
		Initrd:       sc.Initrd,
		Image:        sc.Image,
		IGVM:         sc.IGVM,
		Cmdline:      strings.Join(params, " "),
		VCPUs:        sc.VCPUs,
		MemoryMiB:    sc.MemoryMiB,
		Confidential: sc.Confidential,
		HostData:     spec.HostData,
		AgentBinary:  sc.Agent,
		Disks:        spec.Disks,
		Network:      spec.Network,
	}
	if c.AgentBinary == "" && sc.Launcher == config.LauncherProcess {
		c.AgentBinary = DefaultAgentBinary()
	}
	if spec.SharedDir != "" {
		c.SharedDirs = []hostvmm.SharedDir{{Tag: SharedFSTag, HostPath: spec.SharedDir}}
	}
	return c
}

// Launch implements Launcher.
func (l *vmmLauncher) Launch(ctx context.Context, spec LaunchSpec) (VM, error) {
	sb, err := l.starter.Start(ctx, VMMConfig(spec))
	if err != nil {
		return nil, err
	}
	return vmmSandbox{sb}, nil
}

type vmmSandbox struct{ sb hostvmm.Sandbox }

func (v vmmSandbox) DialAgent(ctx context.Context) (net.Conn, error) { return v.sb.DialAgent(ctx) }
func (v vmmSandbox) Stop(ctx context.Context) error                  { return v.sb.Stop(ctx) }
func (v vmmSandbox) Cleanup() error                                  { return v.sb.Cleanup() }

func (v vmmSandbox) Wait(ctx context.Context) error {
	_, err := v.sb.Wait(ctx)
	return err
}
