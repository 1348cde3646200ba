package server

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/cocoon-containers/cocoon/agent/container"
	"github.com/cocoon-containers/cocoon/rpc/agentpb"
	"github.com/cocoon-containers/cocoon/rpc/typespb"
)

const (
	maxDNSEntries = 32
	maxDNSLine    = 256
)

// validHostname accepts 1 to 63 of [a-zA-Z0-9.-], starting with a letter
// or digit.
func validHostname(h string) bool {
	if len(h) == 0 || len(h) > 63 {
		return false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		alnum := (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
		if !alnum && (i == 0 || (c != '.' && c != '-')) {
			return false
		}
	}
	return true
}

func (s *Server) CreateSandbox(ctx context.Context, req *agentpb.CreateSandboxRequest) (*emptypb.Empty, error) {
	if req.SandboxId != "" {
		if err := container.ValidateID("sandbox", req.SandboxId); err != nil {
			return nil, err
		}
	}
	if req.Hostname != "" && !validHostname(req.Hostname) {
		return nil, fmt.Errorf("create sandbox: invalid hostname %q: %w", req.Hostname, errdefs.ErrInvalidArgument)
	}
	if len(req.Dns) > maxDNSEntries {
		return nil, fmt.Errorf("create sandbox: %d dns entries, more than %d: %w", len(req.Dns), maxDNSEntries, errdefs.ErrInvalidArgument)
	}
	for _, d := range req.Dns {
		if len(d) > maxDNSLine || strings.ContainsAny(d, "\n\r\x00") {
			return nil, fmt.Errorf("create sandbox: invalid dns entry %q: %w", d, errdefs.ErrInvalidArgument)
		}
	}
	if req.GuestHookPath != "" {
		return nil, fmt.Errorf("create sandbox: guest hooks are not supported: %w", errdefs.ErrInvalidArgument)
	}
	if req.SandboxPidns {
		return nil, fmt.Errorf("create sandbox: a pid namespace shared by the pod's containers is not supported: %w", errdefs.ErrInvalidArgument)
	}
	if len(req.KernelModules) > 0 {
		return nil, fmt.Errorf("create sandbox: loading kernel modules on request is not supported: %w", errdefs.ErrInvalidArgument)
	}
	if len(req.Storages) > maxStorages {
		return nil, fmt.Errorf("create sandbox: %d storages, more than %d: %w", len(req.Storages), maxStorages, errdefs.ErrInvalidArgument)
	}
	if len(req.Storages) > 0 && s.opts.Storage == nil {
		return nil, missing("CreateSandbox", "storage handler")
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sandbox.created {
		return nil, fmt.Errorf("create sandbox: sandbox %s already exists: %w", s.sandbox.id, errdefs.ErrAlreadyExists)
	}
	if s.opts.PID1 {
		if req.Hostname != "" {
			if err := unix.Sethostname([]byte(req.Hostname)); err != nil {
				return nil, fmt.Errorf("create sandbox: set hostname: %w", err)
			}
		}
		if len(req.Dns) > 0 {
			if err := writeResolvConf(s.opts.ResolvConf, req.Dns); err != nil {
				return nil, fmt.Errorf("create sandbox: %w", err)
			}
		}
	}
	if len(req.Storages) > 0 {
		if _, err := s.opts.Storage.MountStorages(ctx, "", req.Storages); err != nil {
			s.unmountOwner(ctx, "")
			return nil, fmt.Errorf("create sandbox: mount storages: %w", err)
		}
	}
	s.sandbox = sandboxState{created: true, id: req.SandboxId, hostname: req.Hostname}
	s.log.InfoContext(ctx, "sandbox created", "sandbox_id", req.SandboxId)
	return empty, nil
}

// writeResolvConf writes DNS lines; bare addresses become nameserver lines.
func writeResolvConf(path string, dns []string) error {
	var b strings.Builder
	for _, d := range dns {
		d = strings.TrimSpace(d)
		if !strings.Contains(d, " ") {
			d = "nameserver " + d
		}
		b.WriteString(d)
		b.WriteByte('\n')
	}
	tmp := filepath.Join(filepath.Dir(path), ".resolv.conf.cocoon")
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("write resolv.conf: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write resolv.conf: %w", err)
	}
	return nil
}

func (s *Server) DestroySandbox(ctx context.Context, req *agentpb.DestroySandboxRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	created := s.sandbox.created
	s.mu.Unlock()
	if !created {
		return nil, fmt.Errorf("destroy sandbox: no sandbox: %w", errdefs.ErrFailedPrecondition)
	}
	if err := s.destroyAll(ctx); err != nil {
		return nil, fmt.Errorf("destroy sandbox: %w", err)
	}
	s.mu.Lock()
	s.sandbox = sandboxState{}
	s.mu.Unlock()
	s.log.InfoContext(ctx, "sandbox destroyed")
	if s.opts.PID1 && s.opts.PowerOff != nil {
		// Let the reply reach the host before the VM goes away.
		go func() {
			time.Sleep(100 * time.Millisecond)
			s.opts.PowerOff(context.WithoutCancel(ctx))
		}()
	}
	return empty, nil
}

// destroyAll removes every container and the sandbox's storages.
func (s *Server) destroyAll(ctx context.Context) error {
	s.mu.Lock()
	ids := make([]string, 0, len(s.containers))
	for id := range s.containers {
		ids = append(ids, id)
	}
	s.mu.Unlock()
	var errs []error
	for _, id := range ids {
		e, err := s.get(id)
		if err != nil {
			if !errors.Is(err, errdefs.ErrNotFound) {
				errs = append(errs, err)
			}
			continue
		}
		if err := e.lock(ctx); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := s.remove(ctx, id, e, 0); err != nil {
			errs = append(errs, err)
		}
		e.unlock()
	}
	if s.opts.Storage != nil {
		if err := s.opts.Storage.UnmountOwner(ctx, ""); err != nil {
			errs = append(errs, fmt.Errorf("unmount sandbox storages: %w", err))
		}
	}
	return errors.Join(errs...)
}

func (s *Server) CopyFile(ctx context.Context, req *agentpb.CopyFileRequest) (*emptypb.Empty, error) {
	if s.opts.Files == nil {
		return nil, missing("CopyFile", "file copier")
	}
	if err := s.opts.Files.CopyFile(ctx, req); err != nil {
		return nil, err
	}
	return empty, nil
}

func (s *Server) SetPolicy(ctx context.Context, req *agentpb.SetPolicyRequest) (*emptypb.Empty, error) {
	if s.opts.Policy == nil {
		return nil, missing("SetPolicy", "policy engine")
	}
	if err := s.opts.Policy.SetPolicy(ctx, req); err != nil {
		return nil, err
	}
	return empty, nil
}

func (s *Server) UpdateInterface(ctx context.Context, req *agentpb.UpdateInterfaceRequest) (*typespb.Interface, error) {
	if s.opts.Network == nil {
		return nil, missing("UpdateInterface", "network handler")
	}
	return s.opts.Network.UpdateInterface(ctx, req)
}

func (s *Server) UpdateRoutes(ctx context.Context, req *agentpb.UpdateRoutesRequest) (*agentpb.Routes, error) {
	if s.opts.Network == nil {
		return nil, missing("UpdateRoutes", "network handler")
	}
	return s.opts.Network.UpdateRoutes(ctx, req)
}

func (s *Server) ListInterfaces(ctx context.Context, req *agentpb.ListInterfacesRequest) (*agentpb.Interfaces, error) {
	if s.opts.Network == nil {
		return nil, missing("ListInterfaces", "network handler")
	}
	return s.opts.Network.ListInterfaces(ctx, req)
}

func (s *Server) ListRoutes(ctx context.Context, req *agentpb.ListRoutesRequest) (*agentpb.Routes, error) {
	if s.opts.Network == nil {
		return nil, missing("ListRoutes", "network handler")
	}
	return s.opts.Network.ListRoutes(ctx, req)
}

func (s *Server) AddARPNeighbors(ctx context.Context, req *agentpb.AddARPNeighborsRequest) (*emptypb.Empty, error) {
	if s.opts.Network == nil {
		return nil, missing("AddARPNeighbors", "network handler")
	}
	if err := s.opts.Network.AddARPNeighbors(ctx, req); err != nil {
		return nil, err
	}
	return empty, nil
}

func (s *Server) UpdateEphemeralMounts(context.Context, *agentpb.UpdateEphemeralMountsRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("UpdateEphemeralMounts")
}

func (s *Server) RemoveStaleVirtiofsShareMounts(context.Context, *agentpb.RemoveStaleVirtiofsShareMountsRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("RemoveStaleVirtiofsShareMounts")
}

func (s *Server) GetDiagnosticData(context.Context, *agentpb.GetDiagnosticDataRequest) (*agentpb.GetDiagnosticDataResponse, error) {
	return nil, unimplemented("GetDiagnosticData")
}

func (s *Server) GetIPTables(context.Context, *agentpb.GetIPTablesRequest) (*agentpb.GetIPTablesResponse, error) {
	return nil, unimplemented("GetIPTables")
}

func (s *Server) SetIPTables(context.Context, *agentpb.SetIPTablesRequest) (*agentpb.SetIPTablesResponse, error) {
	return nil, unimplemented("SetIPTables")
}

func (s *Server) MemAgentMemcgSet(context.Context, *agentpb.MemAgentMemcgConfig) (*emptypb.Empty, error) {
	return nil, unimplemented("MemAgentMemcgSet")
}

func (s *Server) MemAgentCompactSet(context.Context, *agentpb.MemAgentCompactConfig) (*emptypb.Empty, error) {
	return nil, unimplemented("MemAgentCompactSet")
}

func (s *Server) MemHotplugByProbe(context.Context, *agentpb.MemHotplugByProbeRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("MemHotplugByProbe")
}

func (s *Server) AddSwap(context.Context, *agentpb.AddSwapRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("AddSwap")
}

func (s *Server) AddSwapPath(context.Context, *agentpb.AddSwapPathRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("AddSwapPath")
}

func (s *Server) GetVolumeStats(context.Context, *agentpb.VolumeStatsRequest) (*agentpb.VolumeStatsResponse, error) {
	return nil, unimplemented("GetVolumeStats")
}

func (s *Server) ResizeVolume(context.Context, *agentpb.ResizeVolumeRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("ResizeVolume")
}
