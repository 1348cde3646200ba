package container

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/cocoon-containers/cocoon/rpc/agentpb"
)

// Bounds on host-controlled spec content.
const (
	maxArgs        = 4096
	maxEnv         = 4096
	maxMounts      = 1024
	maxDevices     = 1024
	maxStringBytes = 64 << 10
)

// SpecFromProto converts the OCI spec of a request into the runtime-spec
// form. It rejects what the agent cannot run safely: hooks (they would run
// in the guest outside any container) and missing or relative roots.
func SpecFromProto(p *agentpb.Spec) (*specs.Spec, error) {
	if p == nil {
		return nil, fmt.Errorf("oci spec is missing: %w", errdefs.ErrInvalidArgument)
	}
	if h := p.GetHooks(); h != nil && (len(h.Prestart)+len(h.Poststart)+len(h.Poststop)+
		len(h.CreateRuntime)+len(h.CreateContainer)+len(h.StartContainer)) > 0 {
		return nil, fmt.Errorf("oci hooks are not supported: %w", errdefs.ErrInvalidArgument)
	}
	if p.Root == nil || p.Root.Path == "" {
		return nil, fmt.Errorf("oci spec has no root path: %w", errdefs.ErrInvalidArgument)
	}
	if !filepath.IsAbs(p.Root.Path) || filepath.Clean(p.Root.Path) != p.Root.Path {
		return nil, fmt.Errorf("oci root path %q must be absolute and clean: %w", p.Root.Path, errdefs.ErrInvalidArgument)
	}
	if len(p.Mounts) > maxMounts {
		return nil, fmt.Errorf("oci spec has %d mounts, more than %d: %w", len(p.Mounts), maxMounts, errdefs.ErrInvalidArgument)
	}
	proc, err := ProcessFromProto(p.Process)
	if err != nil {
		return nil, err
	}
	s := &specs.Spec{
		Version:     p.Version,
		Process:     proc,
		Root:        &specs.Root{Path: p.Root.Path, Readonly: p.Root.Readonly},
		Hostname:    p.Hostname,
		Annotations: p.Annotations,
	}
	if s.Version == "" {
		s.Version = specs.Version
	}
	for _, m := range p.Mounts {
		if m == nil {
			continue
		}
		if !filepath.IsAbs(m.Destination) {
			return nil, fmt.Errorf("mount destination %q is not absolute: %w", m.Destination, errdefs.ErrInvalidArgument)
		}
		s.Mounts = append(s.Mounts, specs.Mount{
			Destination: m.Destination,
			Source:      m.Source,
			Type:        m.Type,
			Options:     m.Options,
		})
	}
	s.Linux, err = linuxFromProto(p.Linux)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// ProcessFromProto converts an OCI process.
func ProcessFromProto(p *agentpb.Process) (*specs.Process, error) {
	if p == nil {
		return nil, fmt.Errorf("oci process is missing: %w", errdefs.ErrInvalidArgument)
	}
	if len(p.Args) == 0 || p.Args[0] == "" {
		return nil, fmt.Errorf("oci process has no arguments: %w", errdefs.ErrInvalidArgument)
	}
	if len(p.Args) > maxArgs || len(p.Env) > maxEnv {
		return nil, fmt.Errorf("oci process has too many arguments or variables: %w", errdefs.ErrInvalidArgument)
	}
	if p.Cwd != "" && !filepath.IsAbs(p.Cwd) {
		return nil, fmt.Errorf("oci process cwd %q is not absolute: %w", p.Cwd, errdefs.ErrInvalidArgument)
	}
	if p.OOMScoreAdj < -1000 || p.OOMScoreAdj > 1000 {
		return nil, fmt.Errorf("oom_score_adj %d is outside [-1000, 1000]: %w", p.OOMScoreAdj, errdefs.ErrInvalidArgument)
	}
	oom := int(p.OOMScoreAdj)
	out := &specs.Process{
		Terminal:        p.Terminal,
		Args:            p.Args,
		Env:             p.Env,
		Cwd:             p.Cwd,
		NoNewPrivileges: p.NoNewPrivileges,
		ApparmorProfile: p.ApparmorProfile,
		SelinuxLabel:    p.SelinuxLabel,
		OOMScoreAdj:     &oom,
	}
	if out.Cwd == "" {
		out.Cwd = "/"
	}
	if b := p.ConsoleSize; b != nil {
		out.ConsoleSize = &specs.Box{Height: uint(b.Height), Width: uint(b.Width)}
	}
	if u := p.User; u != nil {
		out.User = specs.User{UID: u.UID, GID: u.GID, AdditionalGids: u.AdditionalGids, Username: u.Username}
	}
	if c := p.Capabilities; c != nil {
		out.Capabilities = &specs.LinuxCapabilities{
			Bounding:    c.Bounding,
			Effective:   c.Effective,
			Inheritable: c.Inheritable,
			Permitted:   c.Permitted,
			Ambient:     c.Ambient,
		}
	}
	for _, r := range p.Rlimits {
		if r == nil {
			continue
		}
		out.Rlimits = append(out.Rlimits, specs.POSIXRlimit{Type: r.Type, Hard: r.Hard, Soft: r.Soft})
	}
	return out, nil
}

func linuxFromProto(l *agentpb.Linux) (*specs.Linux, error) {
	out := &specs.Linux{}
	if l == nil {
		return out, nil
	}
	if len(l.Devices) > maxDevices {
		return nil, fmt.Errorf("oci spec has %d devices, more than %d: %w", len(l.Devices), maxDevices, errdefs.ErrInvalidArgument)
	}
	if l.IntelRdt != nil && l.IntelRdt.L3CacheSchema != "" {
		return nil, fmt.Errorf("intel rdt is not supported: %w", errdefs.ErrInvalidArgument)
	}
	for _, m := range l.UIDMappings {
		out.UIDMappings = append(out.UIDMappings, specs.LinuxIDMapping{ContainerID: m.ContainerID, HostID: m.HostID, Size: m.Size})
	}
	for _, m := range l.GIDMappings {
		out.GIDMappings = append(out.GIDMappings, specs.LinuxIDMapping{ContainerID: m.ContainerID, HostID: m.HostID, Size: m.Size})
	}
	out.Sysctl = l.Sysctl
	out.Resources = ResourcesFromProto(l.Resources)
	for _, ns := range l.Namespaces {
		if ns == nil {
			continue
		}
		t := specs.LinuxNamespaceType(ns.Type)
		switch t {
		case specs.NetworkNamespace:
			// Containers share the guest's network namespace, where the
			// host-configured interfaces live.
			continue
		case specs.PIDNamespace, specs.IPCNamespace, specs.UTSNamespace, specs.MountNamespace,
			specs.UserNamespace, specs.CgroupNamespace, specs.TimeNamespace:
		default:
			return nil, fmt.Errorf("unknown namespace type %q: %w", ns.Type, errdefs.ErrInvalidArgument)
		}
		// A host-chosen path could join the agent's own namespaces: every
		// container gets fresh ones.
		out.Namespaces = append(out.Namespaces, specs.LinuxNamespace{Type: t})
	}
	for _, d := range l.Devices {
		if d == nil {
			continue
		}
		if !filepath.IsAbs(d.Path) {
			return nil, fmt.Errorf("device path %q is not absolute: %w", d.Path, errdefs.ErrInvalidArgument)
		}
		mode := os.FileMode(d.FileMode)
		uid, gid := d.UID, d.GID
		out.Devices = append(out.Devices, specs.LinuxDevice{
			Path: d.Path, Type: d.Type, Major: d.Major, Minor: d.Minor,
			FileMode: &mode, UID: &uid, GID: &gid,
		})
	}
	if sc := l.Seccomp; sc != nil && (sc.DefaultAction != "" || len(sc.Syscalls) > 0) {
		out.Seccomp = &specs.LinuxSeccomp{DefaultAction: specs.LinuxSeccompAction(sc.DefaultAction)}
		for _, a := range sc.Architectures {
			out.Seccomp.Architectures = append(out.Seccomp.Architectures, specs.Arch(a))
		}
		for _, f := range sc.Flags {
			out.Seccomp.Flags = append(out.Seccomp.Flags, specs.LinuxSeccompFlag(f))
		}
		for _, sy := range sc.Syscalls {
			if sy == nil {
				continue
			}
			o := specs.LinuxSyscall{Names: sy.Names, Action: specs.LinuxSeccompAction(sy.Action)}
			if _, ok := sy.ErrnoRet.(*agentpb.LinuxSyscall_Errnoret); ok {
				v := uint(sy.GetErrnoret())
				o.ErrnoRet = &v
			}
			for _, a := range sy.Args {
				if a == nil {
					continue
				}
				o.Args = append(o.Args, specs.LinuxSeccompArg{Index: uint(a.Index), Value: a.Value, ValueTwo: a.ValueTwo, Op: specs.LinuxSeccompOperator(a.Op)})
			}
			out.Seccomp.Syscalls = append(out.Seccomp.Syscalls, o)
		}
	}
	out.RootfsPropagation = l.RootfsPropagation
	out.MaskedPaths = l.MaskedPaths
	out.ReadonlyPaths = l.ReadonlyPaths
	out.MountLabel = l.MountLabel
	return out, nil
}

// ResourcesFromProto converts cgroup resources; zero values mean "unset",
// as in the Kata agent.
func ResourcesFromProto(r *agentpb.LinuxResources) *specs.LinuxResources {
	if r == nil {
		return nil
	}
	out := &specs.LinuxResources{}
	for _, d := range r.Devices {
		if d == nil {
			continue
		}
		dc := specs.LinuxDeviceCgroup{Allow: d.Allow, Type: d.Type, Access: d.Access}
		if d.Major >= 0 && (d.Type == "c" || d.Type == "b") {
			maj, min := d.Major, d.Minor
			dc.Major = &maj
			if min >= 0 {
				dc.Minor = &min
			}
		}
		out.Devices = append(out.Devices, dc)
	}
	if m := r.Memory; m != nil {
		out.Memory = &specs.LinuxMemory{
			Limit:       nonZeroI64(m.Limit),
			Reservation: nonZeroI64(m.Reservation),
			Swap:        nonZeroI64(m.Swap),
			Swappiness:  nonZeroU64(m.Swappiness),
		}
		if m.DisableOOMKiller {
			t := true
			out.Memory.DisableOOMKiller = &t
		}
	}
	if c := r.CPU; c != nil {
		out.CPU = &specs.LinuxCPU{
			Shares:          nonZeroU64(c.Shares),
			Quota:           nonZeroI64(c.Quota),
			Period:          nonZeroU64(c.Period),
			RealtimeRuntime: nonZeroI64(c.RealtimeRuntime),
			RealtimePeriod:  nonZeroU64(c.RealtimePeriod),
			Cpus:            c.Cpus,
			Mems:            c.Mems,
		}
	}
	if p := r.Pids; p != nil && p.Limit != 0 {
		out.Pids = &specs.LinuxPids{Limit: nonZeroI64(p.Limit)}
	}
	if b := r.BlockIO; b != nil {
		out.BlockIO = &specs.LinuxBlockIO{Weight: nonZeroU16(b.Weight), LeafWeight: nonZeroU16(b.LeafWeight)}
		for _, w := range b.WeightDevice {
			if w == nil {
				continue
			}
			wd := specs.LinuxWeightDevice{Weight: nonZeroU16(w.Weight), LeafWeight: nonZeroU16(w.LeafWeight)}
			wd.Major, wd.Minor = w.Major, w.Minor
			out.BlockIO.WeightDevice = append(out.BlockIO.WeightDevice, wd)
		}
		out.BlockIO.ThrottleReadBpsDevice = throttle(b.ThrottleReadBpsDevice)
		out.BlockIO.ThrottleWriteBpsDevice = throttle(b.ThrottleWriteBpsDevice)
		out.BlockIO.ThrottleReadIOPSDevice = throttle(b.ThrottleReadIOPSDevice)
		out.BlockIO.ThrottleWriteIOPSDevice = throttle(b.ThrottleWriteIOPSDevice)
	}
	for _, h := range r.HugepageLimits {
		if h == nil {
			continue
		}
		out.HugepageLimits = append(out.HugepageLimits, specs.LinuxHugepageLimit{Pagesize: h.Pagesize, Limit: h.Limit})
	}
	if n := r.Network; n != nil {
		out.Network = &specs.LinuxNetwork{}
		if n.ClassID != 0 {
			id := n.ClassID
			out.Network.ClassID = &id
		}
		for _, p := range n.Priorities {
			if p == nil {
				continue
			}
			out.Network.Priorities = append(out.Network.Priorities, specs.LinuxInterfacePriority{Name: p.Name, Priority: p.Priority})
		}
	}
	return out
}

func throttle(in []*agentpb.LinuxThrottleDevice) []specs.LinuxThrottleDevice {
	var out []specs.LinuxThrottleDevice
	for _, t := range in {
		if t == nil {
			continue
		}
		d := specs.LinuxThrottleDevice{Rate: t.Rate}
		d.Major, d.Minor = t.Major, t.Minor
		out = append(out, d)
	}
	return out
}

func nonZeroI64(v int64) *int64 {
	if v == 0 {
		return nil
	}
	return &v
}

func nonZeroU64(v uint64) *uint64 {
	if v == 0 {
		return nil
	}
	return &v
}

func nonZeroU16(v uint32) *uint16 {
	if v == 0 || v > 0xffff {
		return nil
	}
	u := uint16(v)
	return &u
}
