package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/cgroups"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/cocoon-containers/cocoon/agent/container"
	"github.com/cocoon-containers/cocoon/rpc/agentpb"
)

// Request size bounds.
const (
	maxReadLen   = 1 << 20
	maxWriteLen  = 1 << 20
	maxStorages  = 256
	maxSignal    = 64
	maxWinsize   = 0xffff
	maxRandBytes = 1 << 20
)

var empty = &emptypb.Empty{}

type entry struct {
	// lifecycle serializes create/start/exec/remove on one container.
	lifecycle chan struct{}
	c         *container.Container
	storages  bool
}

func (e *entry) lock(ctx context.Context) error {
	select {
	case e.lifecycle <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (e *entry) unlock() { <-e.lifecycle }

// get returns a created container.
func (s *Server) get(id string) (*entry, error) {
	if err := container.ValidateID("container", id); err != nil {
		return nil, err
	}
	s.mu.Lock()
	e, ok := s.containers[id]
	s.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("container %s: %w", id, errdefs.ErrNotFound)
	}
	if e.c == nil {
		return nil, fmt.Errorf("container %s is being created: %w", id, errdefs.ErrFailedPrecondition)
	}
	return e, nil
}

// process resolves an exec id; "" and the container id name the init process.
func (s *Server) process(containerID, execID string) (*container.Container, *container.Process, error) {
	e, err := s.get(containerID)
	if err != nil {
		return nil, nil, err
	}
	if execID == containerID {
		execID = ""
	}
	if execID != "" {
		if err := container.ValidateID("exec", execID); err != nil {
			return nil, nil, err
		}
	}
	p, err := e.c.Process(execID)
	if err != nil {
		return nil, nil, err
	}
	return e.c, p, nil
}

func (s *Server) CreateContainer(ctx context.Context, req *agentpb.CreateContainerRequest) (*emptypb.Empty, error) {
	id := req.ContainerId
	if err := container.ValidateID("container", id); err != nil {
		return nil, err
	}
	if req.ExecId != "" && req.ExecId != id {
		return nil, fmt.Errorf("create container %s: exec id %q must be empty or the container id: %w", id, req.ExecId, errdefs.ErrInvalidArgument)
	}
	if len(req.Devices) > 0 {
		return nil, fmt.Errorf("create container %s: device passthrough is not supported: %w", id, errdefs.ErrInvalidArgument)
	}
	if req.SandboxPidns {
		return nil, fmt.Errorf("create container %s: the sandbox pid namespace is not supported: %w", id, errdefs.ErrInvalidArgument)
	}
	if len(req.SharedMounts) > 0 {
		return nil, fmt.Errorf("create container %s: shared mounts are not supported: %w", id, errdefs.ErrInvalidArgument)
	}
	if len(req.Storages) > maxStorages {
		return nil, fmt.Errorf("create container %s: %d storages, more than %d: %w", id, len(req.Storages), maxStorages, errdefs.ErrInvalidArgument)
	}
	if len(req.Storages) > 0 && s.opts.Storage == nil {
		return nil, missing("CreateContainer", "storage handler")
	}
	spec, err := container.SpecFromProto(req.OCI)
	if err != nil {
		return nil, fmt.Errorf("create container %s: %w", id, err)
	}
	if err := applyStringUser(spec.Process, req.StringUser); err != nil {
		return nil, fmt.Errorf("create container %s: %w", id, err)
	}

	s.mu.Lock()
	if !s.sandbox.created {
		s.mu.Unlock()
		return nil, fmt.Errorf("create container %s: no sandbox (call CreateSandbox first): %w", id, errdefs.ErrFailedPrecondition)
	}
	if _, ok := s.containers[id]; ok {
		s.mu.Unlock()
		return nil, fmt.Errorf("create container %s: %w", id, errdefs.ErrAlreadyExists)
	}
	e := &entry{lifecycle: make(chan struct{}, 1)}
	e.lifecycle <- struct{}{}
	s.containers[id] = e
	s.mu.Unlock()

	ok := false
	defer func() {
		if !ok {
			s.mu.Lock()
			delete(s.containers, id)
			s.mu.Unlock()
		}
		e.unlock()
	}()

	if len(req.Storages) > 0 {
		e.storages = true
		if _, err := s.opts.Storage.MountStorages(ctx, id, req.Storages); err != nil {
			s.unmountOwner(ctx, id)
			return nil, fmt.Errorf("create container %s: mount storages: %w", id, err)
		}
	}
	c, err := container.Create(ctx, container.Config{
		ID:           id,
		StateRoot:    s.opts.RunDir,
		CgroupParent: s.opts.CgroupParent,
		Spec:         spec,
		NoPivotRoot:  s.opts.NoPivotRoot,
		OnOOM:        s.pushOOM,
		Logger:       s.log,
	})
	if err != nil {
		if e.storages {
			s.unmountOwner(ctx, id)
		}
		return nil, err
	}
	e.c = c
	ok = true
	s.log.InfoContext(ctx, "container created", "container_id", id)
	return empty, nil
}

func (s *Server) unmountOwner(ctx context.Context, owner string) {
	if s.opts.Storage == nil {
		return
	}
	if err := s.opts.Storage.UnmountOwner(ctx, owner); err != nil {
		s.log.WarnContext(ctx, "unmount storages", "container_id", owner, "error", err)
	}
}

func (s *Server) StartContainer(ctx context.Context, req *agentpb.StartContainerRequest) (*emptypb.Empty, error) {
	e, err := s.get(req.ContainerId)
	if err != nil {
		return nil, err
	}
	if err := e.lock(ctx); err != nil {
		return nil, err
	}
	defer e.unlock()
	if err := e.c.Start(ctx); err != nil {
		return nil, err
	}
	s.log.InfoContext(ctx, "container started", "container_id", req.ContainerId)
	return empty, nil
}

func (s *Server) RemoveContainer(ctx context.Context, req *agentpb.RemoveContainerRequest) (*emptypb.Empty, error) {
	e, err := s.get(req.ContainerId)
	if err != nil {
		return nil, err
	}
	if err := e.lock(ctx); err != nil {
		return nil, err
	}
	defer e.unlock()
	if err := s.remove(ctx, req.ContainerId, e, time.Duration(req.Timeout)*time.Second); err != nil {
		return nil, err
	}
	return empty, nil
}

// remove destroys a container whose lifecycle lock the caller holds.
func (s *Server) remove(ctx context.Context, id string, e *entry, timeout time.Duration) error {
	dctx := ctx
	if timeout > 0 {
		var cancel context.CancelFunc
		dctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	if err := e.c.Destroy(dctx); err != nil {
		return fmt.Errorf("remove container %s: %w", id, err)
	}
	if e.storages {
		if err := s.opts.Storage.UnmountOwner(ctx, id); err != nil {
			return fmt.Errorf("remove container %s: unmount storages: %w", id, err)
		}
	}
	s.mu.Lock()
	delete(s.containers, id)
	s.mu.Unlock()
	s.log.InfoContext(ctx, "container removed", "container_id", id)
	return nil
}

func (s *Server) ExecProcess(ctx context.Context, req *agentpb.ExecProcessRequest) (*emptypb.Empty, error) {
	e, err := s.get(req.ContainerId)
	if err != nil {
		return nil, err
	}
	if err := container.ValidateID("exec", req.ExecId); err != nil {
		return nil, err
	}
	if req.ExecId == req.ContainerId {
		return nil, fmt.Errorf("exec %s: the container id names the init process: %w", req.ExecId, errdefs.ErrAlreadyExists)
	}
	sp, err := container.ProcessFromProto(req.Process)
	if err != nil {
		return nil, fmt.Errorf("exec %s in container %s: %w", req.ExecId, req.ContainerId, err)
	}
	if err := applyStringUser(sp, req.StringUser); err != nil {
		return nil, fmt.Errorf("exec %s in container %s: %w", req.ExecId, req.ContainerId, err)
	}
	if err := e.lock(ctx); err != nil {
		return nil, err
	}
	defer e.unlock()
	if _, err := e.c.Exec(ctx, req.ExecId, sp); err != nil {
		return nil, err
	}
	return empty, nil
}

func (s *Server) SignalProcess(ctx context.Context, req *agentpb.SignalProcessRequest) (*emptypb.Empty, error) {
	if req.Signal == 0 || req.Signal > maxSignal {
		return nil, fmt.Errorf("signal %d out of range: %w", req.Signal, errdefs.ErrInvalidArgument)
	}
	e, err := s.get(req.ContainerId)
	if err != nil {
		return nil, err
	}
	if req.ExecId != "" && req.ExecId != req.ContainerId {
		if err := container.ValidateID("exec", req.ExecId); err != nil {
			return nil, err
		}
	}
	if err := e.c.Signal(ctx, req.ExecId, syscall.Signal(req.Signal)); err != nil {
		return nil, err
	}
	return empty, nil
}

func (s *Server) WaitProcess(ctx context.Context, req *agentpb.WaitProcessRequest) (*agentpb.WaitProcessResponse, error) {
	c, p, err := s.process(req.ContainerId, req.ExecId)
	if err != nil {
		return nil, err
	}
	st, err := p.Wait(ctx)
	if err != nil {
		return nil, fmt.Errorf("wait for %s in container %s: %w", p.ExecID(), req.ContainerId, err)
	}
	p.MarkWaited()
	c.Release(p)
	return &agentpb.WaitProcessResponse{Status: int32(st)}, nil
}

func (s *Server) readStream(ctx context.Context, req *agentpb.ReadStreamRequest, stderr bool) (*agentpb.ReadStreamResponse, error) {
	if req.Len == 0 || req.Len > maxReadLen {
		return nil, fmt.Errorf("read length %d must be in [1, %d]: %w", req.Len, maxReadLen, errdefs.ErrInvalidArgument)
	}
	c, p, err := s.process(req.ContainerId, req.ExecId)
	if err != nil {
		return nil, err
	}
	var data []byte
	if stderr {
		data, err = p.ReadStderr(ctx, int(req.Len))
	} else {
		data, err = p.ReadStdout(ctx, int(req.Len))
	}
	if errors.Is(err, io.EOF) {
		c.Release(p)
		return &agentpb.ReadStreamResponse{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read output of %s: %w", p.ExecID(), err)
	}
	return &agentpb.ReadStreamResponse{Data: data}, nil
}

func (s *Server) ReadStdout(ctx context.Context, req *agentpb.ReadStreamRequest) (*agentpb.ReadStreamResponse, error) {
	return s.readStream(ctx, req, false)
}

func (s *Server) ReadStderr(ctx context.Context, req *agentpb.ReadStreamRequest) (*agentpb.ReadStreamResponse, error) {
	return s.readStream(ctx, req, true)
}

func (s *Server) WriteStdin(ctx context.Context, req *agentpb.WriteStreamRequest) (*agentpb.WriteStreamResponse, error) {
	if len(req.Data) > maxWriteLen {
		return nil, fmt.Errorf("write of %d bytes exceeds %d: %w", len(req.Data), maxWriteLen, errdefs.ErrInvalidArgument)
	}
	_, p, err := s.process(req.ContainerId, req.ExecId)
	if err != nil {
		return nil, err
	}
	n, err := p.WriteStdin(ctx, req.Data)
	if err != nil {
		return nil, err
	}
	return &agentpb.WriteStreamResponse{Len: uint32(n)}, nil
}

func (s *Server) CloseStdin(ctx context.Context, req *agentpb.CloseStdinRequest) (*emptypb.Empty, error) {
	_, p, err := s.process(req.ContainerId, req.ExecId)
	if err != nil {
		return nil, err
	}
	if err := p.CloseStdin(ctx); err != nil {
		return nil, err
	}
	return empty, nil
}

func (s *Server) TtyWinResize(ctx context.Context, req *agentpb.TtyWinResizeRequest) (*emptypb.Empty, error) {
	if req.Row > maxWinsize || req.Column > maxWinsize {
		return nil, fmt.Errorf("window size %dx%d out of range: %w", req.Row, req.Column, errdefs.ErrInvalidArgument)
	}
	_, p, err := s.process(req.ContainerId, req.ExecId)
	if err != nil {
		return nil, err
	}
	if err := p.Resize(ctx, uint16(req.Row), uint16(req.Column)); err != nil {
		return nil, err
	}
	return empty, nil
}

func (s *Server) UpdateContainer(ctx context.Context, req *agentpb.UpdateContainerRequest) (*emptypb.Empty, error) {
	e, err := s.get(req.ContainerId)
	if err != nil {
		return nil, err
	}
	if err := e.c.Update(ctx, container.ResourcesFromProto(req.Resources)); err != nil {
		return nil, err
	}
	return empty, nil
}

func (s *Server) PauseContainer(ctx context.Context, req *agentpb.PauseContainerRequest) (*emptypb.Empty, error) {
	e, err := s.get(req.ContainerId)
	if err != nil {
		return nil, err
	}
	if err := e.c.Pause(ctx); err != nil {
		return nil, err
	}
	return empty, nil
}

func (s *Server) ResumeContainer(ctx context.Context, req *agentpb.ResumeContainerRequest) (*emptypb.Empty, error) {
	e, err := s.get(req.ContainerId)
	if err != nil {
		return nil, err
	}
	if err := e.c.Resume(ctx); err != nil {
		return nil, err
	}
	return empty, nil
}

func (s *Server) StatsContainer(ctx context.Context, req *agentpb.StatsContainerRequest) (*agentpb.StatsContainerResponse, error) {
	e, err := s.get(req.ContainerId)
	if err != nil {
		return nil, err
	}
	st, err := e.c.Stats(ctx)
	if err != nil {
		return nil, err
	}
	return &agentpb.StatsContainerResponse{CgroupStats: statsToProto(st)}, nil
}

func statsToProto(st *cgroups.Stats) *agentpb.CgroupStats {
	mem := func(d cgroups.MemoryData) *agentpb.MemoryData {
		return &agentpb.MemoryData{Usage: d.Usage, MaxUsage: d.MaxUsage, Failcnt: d.Failcnt, Limit: d.Limit}
	}
	blk := func(in []cgroups.BlkioStatEntry) []*agentpb.BlkioStatsEntry {
		out := make([]*agentpb.BlkioStatsEntry, 0, len(in))
		for _, b := range in {
			out = append(out, &agentpb.BlkioStatsEntry{Major: b.Major, Minor: b.Minor, Op: b.Op, Value: b.Value})
		}
		return out
	}
	out := &agentpb.CgroupStats{
		CpuStats: &agentpb.CpuStats{
			CpuUsage: &agentpb.CpuUsage{
				TotalUsage:        st.CpuStats.CpuUsage.TotalUsage,
				PercpuUsage:       st.CpuStats.CpuUsage.PercpuUsage,
				UsageInKernelmode: st.CpuStats.CpuUsage.UsageInKernelmode,
				UsageInUsermode:   st.CpuStats.CpuUsage.UsageInUsermode,
			},
			ThrottlingData: &agentpb.ThrottlingData{
				Periods:          st.CpuStats.ThrottlingData.Periods,
				ThrottledPeriods: st.CpuStats.ThrottlingData.ThrottledPeriods,
				ThrottledTime:    st.CpuStats.ThrottlingData.ThrottledTime,
			},
		},
		MemoryStats: &agentpb.MemoryStats{
			Cache:        st.MemoryStats.Cache,
			Usage:        mem(st.MemoryStats.Usage),
			SwapUsage:    mem(st.MemoryStats.SwapUsage),
			KernelUsage:  mem(st.MemoryStats.KernelUsage),
			UseHierarchy: st.MemoryStats.UseHierarchy,
			Stats:        st.MemoryStats.Stats,
		},
		PidsStats: &agentpb.PidsStats{Current: st.PidsStats.Current, Limit: st.PidsStats.Limit},
		BlkioStats: &agentpb.BlkioStats{
			IoServiceBytesRecursive: blk(st.BlkioStats.IoServiceBytesRecursive),
			IoServicedRecursive:     blk(st.BlkioStats.IoServicedRecursive),
			IoQueuedRecursive:       blk(st.BlkioStats.IoQueuedRecursive),
			IoServiceTimeRecursive:  blk(st.BlkioStats.IoServiceTimeRecursive),
			IoWaitTimeRecursive:     blk(st.BlkioStats.IoWaitTimeRecursive),
			IoMergedRecursive:       blk(st.BlkioStats.IoMergedRecursive),
			IoTimeRecursive:         blk(st.BlkioStats.IoTimeRecursive),
			SectorsRecursive:        blk(st.BlkioStats.SectorsRecursive),
		},
	}
	if len(st.HugetlbStats) > 0 {
		out.HugetlbStats = map[string]*agentpb.HugetlbStats{}
		for k, v := range st.HugetlbStats {
			out.HugetlbStats[k] = &agentpb.HugetlbStats{Usage: v.Usage, MaxUsage: v.MaxUsage, Failcnt: v.Failcnt}
		}
	}
	return out
}

// applyStringUser applies string_user: a numeric uid or gid is used as
// is; a user name is resolved later in the container's /etc/passwd.
func applyStringUser(p *specs.Process, u *agentpb.StringUser) error {
	if u == nil || (u.Uid == "" && u.Gid == "" && len(u.AdditionalGids) == 0) {
		return nil
	}
	parse := func(what, v string) (uint32, error) {
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return 0, fmt.Errorf("string_user %s %q is not numeric: %w", what, v, errdefs.ErrInvalidArgument)
		}
		return uint32(n), nil
	}
	if u.Uid != "" {
		if v, err := strconv.ParseUint(u.Uid, 10, 32); err == nil {
			p.User.UID = uint32(v)
		} else if err := container.ValidateID("user", u.Uid); err != nil {
			return err
		} else {
			p.User.Username = u.Uid
		}
	}
	if u.Gid != "" {
		v, err := parse("gid", u.Gid)
		if err != nil {
			return err
		}
		p.User.GID = v
	}
	if len(u.AdditionalGids) > 0 {
		p.User.AdditionalGids = p.User.AdditionalGids[:0]
		for _, g := range u.AdditionalGids {
			v, err := parse("gid", g)
			if err != nil {
				return err
			}
			p.User.AdditionalGids = append(p.User.AdditionalGids, v)
		}
	}
	return nil
}

func (s *Server) pushOOM(id string) {
	for {
		select {
		case s.oom <- id:
			return
		default:
		}
		// Full: drop the oldest event.
		select {
		case <-s.oom:
		default:
		}
	}
}

func (s *Server) GetOOMEvent(ctx context.Context, req *agentpb.GetOOMEventRequest) (*agentpb.OOMEvent, error) {
	select {
	case id := <-s.oom:
		return &agentpb.OOMEvent{ContainerId: id}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
