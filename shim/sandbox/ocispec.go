package sandbox

import (
	"github.com/cocoon-containers/cocoon/rpc/agentpb"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// toAgentSpec converts an OCI runtime spec into the agent API's Spec, field by
// field, the way the Kata runtime hands a spec to its agent.
func toAgentSpec(s *specs.Spec) *agentpb.Spec {
	if s == nil {
		return nil
	}
	out := &agentpb.Spec{
		Version:     s.Version,
		Process:     ToAgentProcess(s.Process),
		Hostname:    s.Hostname,
		Annotations: copyMap(s.Annotations),
		Hooks:       toAgentHooks(s.Hooks),
	}
	if s.Root != nil {
		out.Root = &agentpb.Root{Path: s.Root.Path, Readonly: s.Root.Readonly}
	}
	for _, m := range s.Mounts {
		out.Mounts = append(out.Mounts, &agentpb.Mount{
			Destination: m.Destination,
			Source:      m.Source,
			Type:        m.Type,
			Options:     append([]string(nil), m.Options...),
		})
	}
	if s.Linux != nil {
		out.Linux = toAgentLinux(s.Linux)
	}
	return out
}

// ToAgentProcess converts an OCI process (a container's init or an exec).
func ToAgentProcess(p *specs.Process) *agentpb.Process {
	if p == nil {
		return nil
	}
	out := &agentpb.Process{
		Terminal: p.Terminal,
		User: &agentpb.User{
			UID:            p.User.UID,
			GID:            p.User.GID,
			AdditionalGids: append([]uint32(nil), p.User.AdditionalGids...),
			Username:       p.User.Username,
		},
		Args:            append([]string(nil), p.Args...),
		Env:             append([]string(nil), p.Env...),
		Cwd:             p.Cwd,
		NoNewPrivileges: p.NoNewPrivileges,
		ApparmorProfile: p.ApparmorProfile,
		SelinuxLabel:    p.SelinuxLabel,
	}
	if p.ConsoleSize != nil {
		out.ConsoleSize = &agentpb.Box{Height: uint32(p.ConsoleSize.Height), Width: uint32(p.ConsoleSize.Width)}
	}
	if p.OOMScoreAdj != nil {
		out.OOMScoreAdj = int64(*p.OOMScoreAdj)
	}
	if c := p.Capabilities; c != nil {
		out.Capabilities = &agentpb.LinuxCapabilities{
			Bounding:    append([]string(nil), c.Bounding...),
			Effective:   append([]string(nil), c.Effective...),
			Inheritable: append([]string(nil), c.Inheritable...),
			Permitted:   append([]string(nil), c.Permitted...),
			Ambient:     append([]string(nil), c.Ambient...),
		}
	}
	for _, r := range p.Rlimits {
		out.Rlimits = append(out.Rlimits, &agentpb.POSIXRlimit{Type: r.Type, Hard: r.Hard, Soft: r.Soft})
	}
	return out
}

func toAgentHooks(h *specs.Hooks) *agentpb.Hooks {
	if h == nil {
		return nil
	}
	conv := func(in []specs.Hook) []*agentpb.Hook {
		var out []*agentpb.Hook
		for _, x := range in {
			hk := &agentpb.Hook{Path: x.Path, Args: append([]string(nil), x.Args...), Env: append([]string(nil), x.Env...)}
			if x.Timeout != nil {
				hk.Timeout = int64(*x.Timeout)
			}
			out = append(out, hk)
		}
		return out
	}
	return &agentpb.Hooks{
		//lint:ignore SA1019 the Kata wire format still carries prestart hooks
		Prestart:        conv(h.Prestart),
		Poststart:       conv(h.Poststart),
		Poststop:        conv(h.Poststop),
		CreateRuntime:   conv(h.CreateRuntime),
		CreateContainer: conv(h.CreateContainer),
		StartContainer:  conv(h.StartContainer),
	}
}

func toAgentLinux(l *specs.Linux) *agentpb.Linux {
	out := &agentpb.Linux{
		Sysctl:            copyMap(l.Sysctl),
		Resources:         ToAgentResources(l.Resources),
		CgroupsPath:       l.CgroupsPath,
		RootfsPropagation: l.RootfsPropagation,
		MaskedPaths:       append([]string(nil), l.MaskedPaths...),
		ReadonlyPaths:     append([]string(nil), l.ReadonlyPaths...),
		MountLabel:        l.MountLabel,
	}
	for _, m := range l.UIDMappings {
		out.UIDMappings = append(out.UIDMappings, &agentpb.LinuxIDMapping{HostID: m.HostID, ContainerID: m.ContainerID, Size: m.Size})
	}
	for _, m := range l.GIDMappings {
		out.GIDMappings = append(out.GIDMappings, &agentpb.LinuxIDMapping{HostID: m.HostID, ContainerID: m.ContainerID, Size: m.Size})
	}
	for _, ns := range l.Namespaces {
		out.Namespaces = append(out.Namespaces, &agentpb.LinuxNamespace{Type: string(ns.Type), Path: ns.Path})
	}
	for _, d := range l.Devices {
		ad := &agentpb.LinuxDevice{Path: d.Path, Type: d.Type, Major: d.Major, Minor: d.Minor}
		if d.FileMode != nil {
			ad.FileMode = uint32(*d.FileMode)
		}
		if d.UID != nil {
			ad.UID = *d.UID
		}
		if d.GID != nil {
			ad.GID = *d.GID
		}
		out.Devices = append(out.Devices, ad)
	}
	if sc := l.Seccomp; sc != nil {
		as := &agentpb.LinuxSeccomp{DefaultAction: string(sc.DefaultAction)}
		for _, a := range sc.Architectures {
			as.Architectures = append(as.Architectures, string(a))
		}
		for _, f := range sc.Flags {
			as.Flags = append(as.Flags, string(f))
		}
		for _, sys := range sc.Syscalls {
			asys := &agentpb.LinuxSyscall{Names: append([]string(nil), sys.Names...), Action: string(sys.Action)}
			if sys.ErrnoRet != nil {
				asys.ErrnoRet = &agentpb.LinuxSyscall_Errnoret{Errnoret: uint32(*sys.ErrnoRet)}
			}
			for _, a := range sys.Args {
				asys.Args = append(asys.Args, &agentpb.LinuxSeccompArg{Index: uint64(a.Index), Value: a.Value, ValueTwo: a.ValueTwo, Op: string(a.Op)})
			}
			as.Syscalls = append(as.Syscalls, asys)
		}
		out.Seccomp = as
	}
	if l.IntelRdt != nil {
		out.IntelRdt = &agentpb.LinuxIntelRdt{L3CacheSchema: l.IntelRdt.L3CacheSchema}
	}
	return out
}

// ToAgentResources converts cgroup resources (CreateContainer and Update).
func ToAgentResources(r *specs.LinuxResources) *agentpb.LinuxResources {
	if r == nil {
		return nil
	}
	out := &agentpb.LinuxResources{}
	for _, d := range r.Devices {
		ad := &agentpb.LinuxDeviceCgroup{Allow: d.Allow, Type: d.Type, Access: d.Access}
		if d.Major != nil {
			ad.Major = *d.Major
		}
		if d.Minor != nil {
			ad.Minor = *d.Minor
		}
		out.Devices = append(out.Devices, ad)
	}
	if m := r.Memory; m != nil {
		am := &agentpb.LinuxMemory{DisableOOMKiller: m.DisableOOMKiller != nil && *m.DisableOOMKiller}
		am.Limit = derefI64(m.Limit)
		am.Reservation = derefI64(m.Reservation)
		am.Swap = derefI64(m.Swap)
		//lint:ignore SA1019 the Kata wire format still carries kernel memory limits
		am.Kernel = derefI64(m.Kernel)
		am.KernelTCP = derefI64(m.KernelTCP)
		if m.Swappiness != nil {
			am.Swappiness = *m.Swappiness
		}
		out.Memory = am
	}
	if c := r.CPU; c != nil {
		ac := &agentpb.LinuxCPU{Cpus: c.Cpus, Mems: c.Mems}
		if c.Shares != nil {
			ac.Shares = *c.Shares
		}
		ac.Quota = derefI64(c.Quota)
		if c.Period != nil {
			ac.Period = *c.Period
		}
		ac.RealtimeRuntime = derefI64(c.RealtimeRuntime)
		if c.RealtimePeriod != nil {
			ac.RealtimePeriod = *c.RealtimePeriod
		}
		out.CPU = ac
	}
	if r.Pids != nil && r.Pids.Limit != nil {
		out.Pids = &agentpb.LinuxPids{Limit: *r.Pids.Limit}
	}
	for _, h := range r.HugepageLimits {
		out.HugepageLimits = append(out.HugepageLimits, &agentpb.LinuxHugepageLimit{Pagesize: h.Pagesize, Limit: h.Limit})
	}
	return out
}

func derefI64(p *int64) int64 {
	if p == nil {
		return 0
	}
	return *p
}

func copyMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
