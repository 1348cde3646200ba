package container

import (
	"errors"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/cocoon-containers/cocoon/rpc/agentpb"
)

func validSpec() *agentpb.Spec {
	return &agentpb.Spec{
		Process: &agentpb.Process{Args: []string{"sh"}, User: &agentpb.User{UID: 1, GID: 2, AdditionalGids: []uint32{3}}, OOMScoreAdj: -5,
			ConsoleSize: &agentpb.Box{Height: 24, Width: 80}, Rlimits: []*agentpb.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 9, Soft: 8}}},
		Root:     &agentpb.Root{Path: "/run/kata-containers/shared/containers/a/rootfs", Readonly: true},
		Hostname: "h",
		Mounts:   []*agentpb.Mount{{Destination: "/proc", Type: "proc", Source: "proc"}},
		Linux: &agentpb.Linux{
			Namespaces: []*agentpb.LinuxNamespace{{Type: "pid", Path: "/proc/1/ns/pid"}, {Type: "network", Path: "/var/run/netns/x"}, {Type: "mount"}},
			Resources: &agentpb.LinuxResources{
				Devices: []*agentpb.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}, {Allow: true, Type: "c", Major: 1, Minor: -1, Access: "rw"}},
				Memory:  &agentpb.LinuxMemory{Limit: 100, Swappiness: 0},
				CPU:     &agentpb.LinuxCPU{Quota: 5000, Period: 10000, Cpus: "0"},
				Pids:    &agentpb.LinuxPids{Limit: 7},
			},
			Seccomp: &agentpb.LinuxSeccomp{DefaultAction: "SCMP_ACT_ALLOW", Syscalls: []*agentpb.LinuxSyscall{
				{Names: []string{"kill"}, Action: "SCMP_ACT_ERRNO", ErrnoRet: &agentpb.LinuxSyscall_Errnoret{Errnoret: 1}},
				{Names: []string{"ptrace"}, Action: "SCMP_ACT_ERRNO"},
			}},
		},
	}
}

func TestSpecFromProto(t *testing.T) {
	s, err := SpecFromProto(validSpec())
	if err != nil {
		t.Fatalf("SpecFromProto: %v", err)
	}
	if got, want := s.Version, specs.Version; got != want {
		t.Errorf("version: got %q, want %q", got, want)
	}
	if got, want := s.Process.User, (specs.User{UID: 1, GID: 2, AdditionalGids: []uint32{3}}); got.UID != want.UID || got.GID != want.GID || len(got.AdditionalGids) != 1 {
		t.Errorf("user: got %+v, want %+v", got, want)
	}
	if got := s.Process.Cwd; got != "/" {
		t.Errorf("default cwd: got %q, want /", got)
	}
	if s.Process.OOMScoreAdj == nil || *s.Process.OOMScoreAdj != -5 {
		t.Errorf("oom_score_adj: got %v, want -5", s.Process.OOMScoreAdj)
	}
	if got := s.Process.ConsoleSize; got == nil || got.Height != 24 || got.Width != 80 {
		t.Errorf("console size: got %+v", got)
	}
	var nsTypes []string
	for _, ns := range s.Linux.Namespaces {
		if ns.Path != "" {
			t.Errorf("namespace %s kept host path %q", ns.Type, ns.Path)
		}
		nsTypes = append(nsTypes, string(ns.Type))
	}
	if got, want := strings.Join(nsTypes, ","), "pid,mount"; got != want {
		t.Errorf("namespaces: got %s, want %s (network dropped)", got, want)
	}
	devs := s.Linux.Resources.Devices
	if len(devs) != 2 || devs[0].Major != nil || devs[1].Major == nil || *devs[1].Major != 1 || devs[1].Minor != nil {
		t.Errorf("device rules: got %+v", devs)
	}
	if m := s.Linux.Resources.Memory; m.Limit == nil || *m.Limit != 100 || m.Swappiness != nil || m.Reservation != nil {
		t.Errorf("memory: got %+v", m)
	}
	if p := s.Linux.Resources.Pids; p == nil || *p.Limit != 7 {
		t.Errorf("pids: got %+v", p)
	}
	sc := s.Linux.Seccomp
	if sc == nil || len(sc.Syscalls) != 2 || sc.Syscalls[0].ErrnoRet == nil || *sc.Syscalls[0].ErrnoRet != 1 || sc.Syscalls[1].ErrnoRet != nil {
		t.Errorf("seccomp: got %+v", sc)
	}
}

func TestSpecFromProtoRejects(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*agentpb.Spec)
	}{
		{"no root", func(s *agentpb.Spec) { s.Root = nil }},
		{"relative root", func(s *agentpb.Spec) { s.Root.Path = "rootfs" }},
		{"dotdot root", func(s *agentpb.Spec) { s.Root.Path = "/a/../b" }},
		{"no process", func(s *agentpb.Spec) { s.Process = nil }},
		{"empty argv0", func(s *agentpb.Spec) { s.Process.Args = []string{""} }},
		{"relative cwd", func(s *agentpb.Spec) { s.Process.Cwd = "tmp" }},
		{"oom too low", func(s *agentpb.Spec) { s.Process.OOMScoreAdj = -1001 }},
		{"too many args", func(s *agentpb.Spec) { s.Process.Args = make([]string, maxArgs+1); s.Process.Args[0] = "x" }},
		{"hooks", func(s *agentpb.Spec) { s.Hooks = &agentpb.Hooks{CreateRuntime: []*agentpb.Hook{{Path: "/x"}}} }},
		{"relative mount", func(s *agentpb.Spec) { s.Mounts[0].Destination = "proc" }},
		{"too many mounts", func(s *agentpb.Spec) { s.Mounts = make([]*agentpb.Mount, maxMounts+1) }},
		{"unknown namespace", func(s *agentpb.Spec) { s.Linux.Namespaces[0].Type = "nope" }},
		{"relative device", func(s *agentpb.Spec) { s.Linux.Devices = []*agentpb.LinuxDevice{{Path: "dev/x"}} }},
		{"intel rdt", func(s *agentpb.Spec) { s.Linux.IntelRdt = &agentpb.LinuxIntelRdt{L3CacheSchema: "L3:0=f"} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := validSpec()
			tt.mod(s)
			_, err := SpecFromProto(s)
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("got %v, want an invalid-argument error", err)
			}
		})
	}
	if _, err := SpecFromProto(nil); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("nil spec: got %v, want invalid argument", err)
	}
}

func TestValidateID(t *testing.T) {
	tests := []struct {
		id string
		ok bool
	}{
		{"a", true},
		{"abc-DEF_1.2", true},
		{strings.Repeat("x", 128), true},
		{strings.Repeat("x", 129), false},
		{"", false},
		{".hidden", false},
		{"-flag", false},
		{"../x", false},
		{"a/b", false},
		{"a b", false},
		{"a\x00", false},
		{"é", false},
	}
	for _, tt := range tests {
		err := ValidateID("container", tt.id)
		if got := err == nil; got != tt.ok {
			t.Errorf("ValidateID(%q): got %v, want ok=%v", tt.id, err, tt.ok)
		}
		if err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("ValidateID(%q): error %v is not invalid-argument", tt.id, err)
		}
	}
}

func TestClampOOM(t *testing.T) {
	tests := []struct {
		requested, current int
		privileged         bool
		want               int
		clamped            bool
	}{
		{-500, 0, true, -500, false},
		{-500, 0, false, 0, true},
		{-500, -800, false, -500, false},
		{100, 0, false, 100, false},
		{-1000, -999, false, -999, true},
	}
	for _, tt := range tests {
		got, clamped := clampOOM(tt.requested, tt.current, tt.privileged)
		if got != tt.want || clamped != tt.clamped {
			t.Errorf("clampOOM(%d, %d, %v) = %d, %v; want %d, %v", tt.requested, tt.current, tt.privileged, got, clamped, tt.want, tt.clamped)
		}
	}
}
