// Package task is the containerd task service (containerd.task.v2.Task) of
// the Cocoon shim: it maps containerd's task API onto the guest agent API,
// one sandbox (VM) per shim, and publishes task events in the order
// containerd expects.
package task

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/cocoon-containers/cocoon/rpc/agentpb"
	"github.com/cocoon-containers/cocoon/shim/config"
	"github.com/cocoon-containers/cocoon/shim/sandbox"
	cgroupsv1 "github.com/containerd/cgroups/stats/v1"
	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types"
	tasktypes "github.com/containerd/containerd/api/types/task"
	grpcerr "github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/events"
	"github.com/containerd/containerd/mount"
	runtimeoptions "github.com/containerd/containerd/pkg/runtimeoptions/v1"
	"github.com/containerd/containerd/protobuf"
	ptypes "github.com/containerd/containerd/protobuf/types"
	"github.com/containerd/containerd/runtime"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/emptypb"
)

// maxSpecSize bounds a bundle's config.json.
const maxSpecSize = 4 << 20

// Options configure a Service.
type Options struct {
	// Launcher starts the sandbox VM for a configuration.
	Launcher func(cfg config.Config) (sandbox.Launcher, error)
	// LoadConfig reads the runtime configuration; config.Load by default.
	LoadConfig func(path string) (config.Config, error)
	// Publisher receives task events; Shutdown ends the shim.
	Publisher events.Publisher
	Shutdown  func()
	Logger    *slog.Logger
}

// Service implements taskAPI.TaskService for one sandbox.
type Service struct {
	ctx  context.Context // the shim's lifetime, not a request's
	opts Options
	log  *slog.Logger

	mu         sync.Mutex
	sb         *sandbox.Sandbox
	sandboxID  string
	containers map[string]*container

	events     chan event
	eventsDone chan struct{}
}

type event struct {
	topic string
	msg   any
}

type container struct {
	id        string
	bundle    string
	rootfs    string // host path of the mounted rootfs
	mounted   bool
	isSandbox bool
	init      *process
	execs     map[string]*process
}

var _ taskAPI.TaskService = (*Service)(nil)

// New returns a task service. ctx lives as long as the shim.
func New(ctx context.Context, opts Options) *Service {
	if opts.LoadConfig == nil {
		opts.LoadConfig = config.Load
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Shutdown == nil {
		opts.Shutdown = func() {}
	}
	s := &Service{
		ctx:        ctx,
		opts:       opts,
		log:        opts.Logger,
		containers: map[string]*container{},
		events:     make(chan event, 128),
		eventsDone: make(chan struct{}),
	}
	go s.forward()
	return s
}

// forward publishes events one at a time, in the order they were sent.
func (s *Service) forward() {
	defer close(s.eventsDone)
	for e := range s.events {
		if s.opts.Publisher == nil {
			continue
		}
		ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
		if err := s.opts.Publisher.Publish(ctx, e.topic, e.msg); err != nil {
			s.log.Warn("publish event", "topic", e.topic, "error", err)
		}
		cancel()
	}
}

func (s *Service) send(topic string, msg any) { s.events <- event{topic, msg} }

// pid is what the task API reports as the pid of every process: the guest's
// pids mean nothing on the host, so, like the Kata runtime, the shim reports
// a host process that lives as long as the sandbox.
func pid() uint32 { return uint32(os.Getpid()) }

func toGRPC(err error) error {
	if err == nil {
		return nil
	}
	return grpcerr.ToGRPC(err)
}

func (s *Service) getContainer(id string) (*container, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.containers[id]
	if !ok {
		return nil, fmt.Errorf("container %s: %w", id, errdefs.ErrNotFound)
	}
	return c, nil
}

func (s *Service) getProcess(id, execID string) (*container, *process, error) {
	c, err := s.getContainer(id)
	if err != nil {
		return nil, nil, err
	}
	if execID == "" {
		return c, c.init, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := c.execs[execID]
	if !ok {
		return nil, nil, fmt.Errorf("exec %s in container %s: %w", execID, id, errdefs.ErrNotFound)
	}
	return c, p, nil
}

func (s *Service) agent() (agentpb.AgentServiceService, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sb == nil {
		return nil, fmt.Errorf("no sandbox: %w", errdefs.ErrFailedPrecondition)
	}
	return s.sb.Agent(), nil
}

// readSpec reads config.json from a bundle.
func readSpec(bundle string) (*specs.Spec, error) {
	f, err := os.Open(filepath.Join(bundle, "config.json"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var sp specs.Spec
	if err := json.NewDecoder(io.LimitReader(f, maxSpecSize)).Decode(&sp); err != nil {
		return nil, fmt.Errorf("decode config.json: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	return &sp, nil
}

// configPath extracts ConfigPath from the create request's runtime options.
func configPath(opts *ptypes.Any) (string, error) {
	if opts == nil || opts.GetTypeUrl() == "" {
		return "", nil
	}
	v, err := typeurl.UnmarshalAny(opts)
	if err != nil {
		// Options of a type this shim does not know (for example runc's)
		// carry nothing for it.
		return "", nil
	}
	if o, ok := v.(*runtimeoptions.Options); ok {
		return o.ConfigPath, nil
	}
	return "", nil
}

// Create creates a container: the first (sandbox) container of the shim
// launches the VM; every container becomes a CreateContainer request.
func (s *Service) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (_ *taskAPI.CreateTaskResponse, retErr error) {
	if err := sandbox.ValidID(r.ID); err != nil {
		return nil, toGRPC(fmt.Errorf("create: %w", err))
	}
	if !filepath.IsAbs(r.Bundle) {
		return nil, toGRPC(fmt.Errorf("create %s: bundle %q is not absolute: %w", r.ID, r.Bundle, errdefs.ErrInvalidArgument))
	}
	if r.Checkpoint != "" {
		return nil, toGRPC(fmt.Errorf("create %s from a checkpoint: %w", r.ID, errdefs.ErrNotImplemented))
	}
	spec, err := readSpec(r.Bundle)
	if err != nil {
		return nil, toGRPC(fmt.Errorf("create %s: %w", r.ID, err))
	}
	role, err := sandbox.RoleOf(r.ID, spec.Annotations)
	if err != nil {
		return nil, toGRPC(fmt.Errorf("create: %w", err))
	}
	log := s.log.With("container_id", r.ID, "sandbox_id", role.SandboxID)

	s.mu.Lock()
	if _, ok := s.containers[r.ID]; ok {
		s.mu.Unlock()
		return nil, toGRPC(fmt.Errorf("create %s: %w", r.ID, errdefs.ErrAlreadyExists))
	}
	switch {
	case s.sandboxID == "" && !role.IsSandbox:
		s.mu.Unlock()
		return nil, toGRPC(fmt.Errorf("create %s: sandbox %s is not running in this shim: %w", r.ID, role.SandboxID, errdefs.ErrFailedPrecondition))
	case s.sandboxID != "" && (role.IsSandbox || role.SandboxID != s.sandboxID):
		s.mu.Unlock()
		return nil, toGRPC(fmt.Errorf("create %s: this shim runs sandbox %s, not %s: %w", r.ID, s.sandboxID, role.SandboxID, errdefs.ErrFailedPrecondition))
	}
	if role.IsSandbox {
		// Claim the shim for this sandbox while the VM starts.
		s.sandboxID = role.SandboxID
	}
	c := &container{id: r.ID, bundle: r.Bundle, isSandbox: role.IsSandbox, execs: map[string]*process{}}
	c.init = newProcess(r.ID, "", stdio{stdin: r.Stdin, stdout: r.Stdout, stderr: r.Stderr, terminal: r.Terminal})
	s.containers[r.ID] = c
	s.mu.Unlock()
	defer func() {
		if retErr != nil {
			s.mu.Lock()
			delete(s.containers, r.ID)
			if role.IsSandbox {
				s.sandboxID = ""
			}
			s.mu.Unlock()
			s.cleanupContainer(context.WithoutCancel(ctx), c)
		}
	}()

	if err := s.mountRootfs(c, r.Rootfs); err != nil {
		return nil, toGRPC(fmt.Errorf("create %s: %w", r.ID, err))
	}
	if role.IsSandbox {
		if err := s.startSandbox(ctx, role.SandboxID, r.Bundle, c.rootfs, toMounts(r.Rootfs), spec, r.Options); err != nil {
			return nil, toGRPC(fmt.Errorf("create %s: %w", r.ID, err))
		}
	}
	s.mu.Lock()
	sb := s.sb
	s.mu.Unlock()
	if sb == nil {
		return nil, toGRPC(fmt.Errorf("create %s: sandbox %s: %w", r.ID, role.SandboxID, errdefs.ErrFailedPrecondition))
	}
	req, err := sb.ContainerRequest(ctx, r.ID, c.rootfs, spec)
	if err != nil {
		return nil, toGRPC(fmt.Errorf("create %s: %w", r.ID, err))
	}
	if _, err := sb.Agent().CreateContainer(ctx, req); err != nil {
		return nil, toGRPC(fmt.Errorf("create %s: agent: %w", r.ID, grpcerr.FromGRPC(err)))
	}
	if err := c.init.startIO(s.ctx, sb.Agent(), log); err != nil {
		return nil, toGRPC(fmt.Errorf("create %s: stdio: %w", r.ID, err))
	}
	var mounts []*types.Mount
	mounts = append(mounts, r.Rootfs...)
	s.send(runtime.TaskCreateEventTopic, &eventstypes.TaskCreate{
		ContainerID: r.ID,
		Bundle:      r.Bundle,
		Rootfs:      mounts,
		IO:          &eventstypes.TaskIO{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
		Checkpoint:  r.Checkpoint,
		Pid:         pid(),
	})
	log.Debug("container created")
	return &taskAPI.CreateTaskResponse{Pid: pid()}, nil
}

func toMounts(rootfs []*types.Mount) []mount.Mount {
	var ms []mount.Mount
	for _, m := range rootfs {
		ms = append(ms, mount.Mount{Type: m.Type, Source: m.Source, Options: m.Options})
	}
	return ms
}

// mountRootfs mounts the snapshot containerd handed over at <bundle>/rootfs.
func (s *Service) mountRootfs(c *container, rootfs []*types.Mount) error {
	c.rootfs = filepath.Join(c.bundle, "rootfs")
	if len(rootfs) == 0 {
		return nil
	}
	ms := toMounts(rootfs)
	if err := os.MkdirAll(c.rootfs, 0o711); err != nil {
		return fmt.Errorf("rootfs dir: %w", err)
	}
	if err := mount.All(ms, c.rootfs); err != nil {
		return fmt.Errorf("mount rootfs: %w", err)
	}
	c.mounted = true
	return nil
}

func (s *Service) startSandbox(ctx context.Context, id, bundle, rootfs string, rootfsMounts []mount.Mount, spec *specs.Spec, opts *ptypes.Any) error {
	path, err := configPath(opts)
	if err != nil {
		return err
	}
	cfg, err := s.opts.LoadConfig(config.Resolve(path))
	if err != nil {
		return err
	}
	if s.opts.Launcher == nil {
		return fmt.Errorf("no launcher: %w", errdefs.ErrFailedPrecondition)
	}
	l, err := s.opts.Launcher(cfg)
	if err != nil {
		return err
	}
	if err := writeStateFile(bundle, sandbox.StateDir(cfg, id)); err != nil {
		return fmt.Errorf("record state dir: %w", err)
	}
	sb, err := sandbox.Start(ctx, sandbox.Options{
		ID:           id,
		Config:       cfg,
		Launcher:     l,
		Annotations:  spec.Annotations,
		Hostname:     spec.Hostname,
		Logger:       s.log,
		ContainerID:  id,
		Rootfs:       rootfs,
		RootfsMounts: rootfsMounts,
	})
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.sb = sb
	s.mu.Unlock()
	go s.watchSandbox(sb)
	return nil
}

// watchSandbox turns a VM that died under running processes into exits.
func (s *Service) watchSandbox(sb *sandbox.Sandbox) {
	if err := sb.Wait(s.ctx); err != nil {
		return
	}
	s.mu.Lock()
	if s.sb != sb {
		s.mu.Unlock()
		return
	}
	var procs []*process
	for _, c := range s.containers {
		procs = append(procs, c.init)
		for _, p := range c.execs {
			procs = append(procs, p)
		}
	}
	s.mu.Unlock()
	for _, p := range procs {
		p.mu.Lock()
		started := p.started
		p.mu.Unlock()
		if started && p.setExited(255) {
			s.log.Warn("sandbox gone under a running process", "container_id", p.cid, "exec_id", p.execID)
			s.sendExit(p)
		}
	}
}

func (s *Service) sendExit(p *process) {
	p.mu.Lock()
	ev := &eventstypes.TaskExit{
		ContainerID: p.cid,
		ID:          p.execID,
		Pid:         pid(),
		ExitStatus:  p.exitStatus,
		ExitedAt:    protobuf.ToTimestamp(p.exitedAt),
	}
	p.mu.Unlock()
	if ev.ID == "" {
		ev.ID = p.cid
	}
	s.send(runtime.TaskExitEventTopic, ev)
}

// Start starts the init process or an exec.
func (s *Service) Start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, toGRPC(fmt.Errorf("start: %w", err))
	}
	agent, err := s.agent()
	if err != nil {
		return nil, toGRPC(fmt.Errorf("start %s: %w", r.ID, err))
	}
	p.mu.Lock()
	if p.started {
		p.mu.Unlock()
		return nil, toGRPC(fmt.Errorf("start %s %s: already started: %w", r.ID, r.ExecID, errdefs.ErrFailedPrecondition))
	}
	p.started = true
	p.mu.Unlock()
	log := s.log.With("container_id", r.ID, "exec_id", r.ExecID)
	if r.ExecID == "" {
		if _, err := agent.StartContainer(ctx, &agentpb.StartContainerRequest{ContainerId: c.id}); err != nil {
			p.mu.Lock()
			p.started = false
			p.mu.Unlock()
			return nil, toGRPC(fmt.Errorf("start %s: agent: %w", r.ID, grpcerr.FromGRPC(err)))
		}
		s.send(runtime.TaskStartEventTopic, &eventstypes.TaskStart{ContainerID: c.id, Pid: pid()})
	} else {
		req := &agentpb.ExecProcessRequest{ContainerId: c.id, ExecId: r.ExecID, Process: p.spec}
		if _, err := agent.ExecProcess(ctx, req); err != nil {
			p.mu.Lock()
			p.started = false
			p.mu.Unlock()
			return nil, toGRPC(fmt.Errorf("exec %s in %s: agent: %w", r.ExecID, r.ID, grpcerr.FromGRPC(err)))
		}
		if err := p.startIO(s.ctx, agent, log); err != nil {
			return nil, toGRPC(fmt.Errorf("exec %s in %s: stdio: %w", r.ExecID, r.ID, err))
		}
		s.send(runtime.TaskExecStartedEventTopic, &eventstypes.TaskExecStarted{ContainerID: c.id, ExecID: r.ExecID, Pid: pid()})
	}
	go s.waitProcess(agent, p, log)
	return &taskAPI.StartResponse{Pid: pid()}, nil
}

// waitProcess waits for the process in the guest, drains its output and
// only then records and publishes the exit.
func (s *Service) waitProcess(agent agentpb.AgentServiceService, p *process, log *slog.Logger) {
	resp, err := agent.WaitProcess(s.ctx, &agentpb.WaitProcessRequest{ContainerId: p.cid, ExecId: p.agentExecID()})
	code := uint32(255)
	if err != nil {
		if p.isExited() {
			return
		}
		log.Warn("wait process", "error", err)
	} else {
		code = uint32(resp.Status)
	}
	p.waitIO()
	if p.setExited(code) {
		s.sendExit(p)
	}
	p.closeStdin()
}

// Delete removes an exited exec, or a container with everything it holds.
func (s *Service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, toGRPC(fmt.Errorf("delete: %w", err))
	}
	p.mu.Lock()
	started := p.started
	p.mu.Unlock()
	if started && !p.isExited() {
		return nil, toGRPC(fmt.Errorf("delete %s %s: process is running: %w", r.ID, r.ExecID, errdefs.ErrFailedPrecondition))
	}
	if r.ExecID != "" {
		s.mu.Lock()
		delete(c.execs, r.ExecID)
		s.mu.Unlock()
		return s.deleteResponse(p), nil
	}
	s.mu.Lock()
	delete(s.containers, c.id)
	s.mu.Unlock()
	if err := s.cleanupContainer(ctx, c); err != nil {
		s.log.Warn("clean up container", "container_id", c.id, "error", err)
	}
	if !started {
		p.setExited(0)
	}
	resp := s.deleteResponse(p)
	s.send(runtime.TaskDeleteEventTopic, &eventstypes.TaskDelete{
		ContainerID: c.id,
		ID:          c.id,
		Pid:         resp.Pid,
		ExitStatus:  resp.ExitStatus,
		ExitedAt:    resp.ExitedAt,
	})
	return resp, nil
}

func (s *Service) deleteResponse(p *process) *taskAPI.DeleteResponse {
	p.mu.Lock()
	defer p.mu.Unlock()
	return &taskAPI.DeleteResponse{Pid: pid(), ExitStatus: p.exitStatus, ExitedAt: protobuf.ToTimestamp(p.exitedAt)}
}

// cleanupContainer removes the container from the guest and the host; for
// the sandbox container it stops the VM.
func (s *Service) cleanupContainer(ctx context.Context, c *container) error {
	var errs []error
	s.mu.Lock()
	sb := s.sb
	s.mu.Unlock()
	if sb != nil {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if _, err := sb.Agent().RemoveContainer(rctx, &agentpb.RemoveContainerRequest{ContainerId: c.id}); err != nil && !errdefs.IsNotFound(grpcerr.FromGRPC(err)) {
			s.log.Debug("remove container in the guest", "container_id", c.id, "error", err)
		}
		cancel()
		if err := sb.RemoveContainer(c.id); err != nil {
			errs = append(errs, err)
		}
	}
	c.init.closeStdin()
	if c.mounted {
		if err := mount.UnmountAll(c.rootfs, 0); err != nil {
			errs = append(errs, fmt.Errorf("unmount rootfs: %w", err))
		}
		c.mounted = false
	}
	if c.isSandbox && sb != nil {
		s.mu.Lock()
		s.sb = nil
		s.mu.Unlock()
		if err := sb.Stop(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Exec adds an exec process; it runs on Start.
func (s *Service) Exec(ctx context.Context, r *taskAPI.ExecProcessRequest) (*emptypb.Empty, error) {
	if err := sandbox.ValidID(r.ExecID); err != nil {
		return nil, toGRPC(fmt.Errorf("exec: %w", err))
	}
	c, err := s.getContainer(r.ID)
	if err != nil {
		return nil, toGRPC(fmt.Errorf("exec: %w", err))
	}
	if c.init.isExited() {
		return nil, toGRPC(fmt.Errorf("exec in %s: container stopped: %w", r.ID, errdefs.ErrFailedPrecondition))
	}
	if r.Spec == nil {
		return nil, toGRPC(fmt.Errorf("exec %s: no process spec: %w", r.ExecID, errdefs.ErrInvalidArgument))
	}
	var ps specs.Process
	if err := json.Unmarshal(r.Spec.Value, &ps); err != nil {
		return nil, toGRPC(fmt.Errorf("exec %s: process spec: %v: %w", r.ExecID, err, errdefs.ErrInvalidArgument))
	}
	p := newProcess(r.ID, r.ExecID, stdio{stdin: r.Stdin, stdout: r.Stdout, stderr: r.Stderr, terminal: r.Terminal})
	p.spec = sandbox.ToAgentProcess(&ps)
	p.spec.Terminal = r.Terminal
	s.mu.Lock()
	if _, ok := c.execs[r.ExecID]; ok {
		s.mu.Unlock()
		return nil, toGRPC(fmt.Errorf("exec %s in %s: %w", r.ExecID, r.ID, errdefs.ErrAlreadyExists))
	}
	c.execs[r.ExecID] = p
	s.mu.Unlock()
	s.send(runtime.TaskExecAddedEventTopic, &eventstypes.TaskExecAdded{ContainerID: r.ID, ExecID: r.ExecID})
	return &emptypb.Empty{}, nil
}

// Kill signals one process, or with All every process of the container.
func (s *Service) Kill(ctx context.Context, r *taskAPI.KillRequest) (*emptypb.Empty, error) {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, toGRPC(fmt.Errorf("kill: %w", err))
	}
	p.mu.Lock()
	started := p.started
	p.mu.Unlock()
	if p.isExited() {
		return nil, toGRPC(fmt.Errorf("kill %s %s: process already finished: %w", r.ID, r.ExecID, errdefs.ErrNotFound))
	}
	if !started {
		if r.ExecID != "" {
			return nil, toGRPC(fmt.Errorf("kill %s %s: not started: %w", r.ID, r.ExecID, errdefs.ErrFailedPrecondition))
		}
		// A created container that is killed before it starts just ends.
		if p.setExited(128 + r.Signal) {
			s.sendExit(p)
		}
		return &emptypb.Empty{}, nil
	}
	agent, err := s.agent()
	if err != nil {
		return nil, toGRPC(fmt.Errorf("kill %s: %w", r.ID, err))
	}
	eid := p.agentExecID()
	if r.All && r.ExecID == "" {
		eid = ""
	}
	if _, err := agent.SignalProcess(ctx, &agentpb.SignalProcessRequest{ContainerId: r.ID, ExecId: eid, Signal: r.Signal}); err != nil {
		return nil, toGRPC(fmt.Errorf("kill %s %s: agent: %w", r.ID, r.ExecID, grpcerr.FromGRPC(err)))
	}
	return &emptypb.Empty{}, nil
}

// Wait blocks until the process exits.
func (s *Service) Wait(ctx context.Context, r *taskAPI.WaitRequest) (*taskAPI.WaitResponse, error) {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, toGRPC(fmt.Errorf("wait: %w", err))
	}
	select {
	case <-p.exited:
	case <-ctx.Done():
		return nil, toGRPC(ctx.Err())
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return &taskAPI.WaitResponse{ExitStatus: p.exitStatus, ExitedAt: protobuf.ToTimestamp(p.exitedAt)}, nil
}

// State reports a process's status.
func (s *Service) State(ctx context.Context, r *taskAPI.StateRequest) (*taskAPI.StateResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, toGRPC(fmt.Errorf("state: %w", err))
	}
	st := p.status()
	p.mu.Lock()
	defer p.mu.Unlock()
	return &taskAPI.StateResponse{
		ID:         r.ID,
		Bundle:     c.bundle,
		Pid:        pid(),
		Status:     st,
		Stdin:      p.stdio.stdin,
		Stdout:     p.stdio.stdout,
		Stderr:     p.stdio.stderr,
		Terminal:   p.stdio.terminal,
		ExitStatus: p.exitStatus,
		ExitedAt:   protobuf.ToTimestamp(p.exitedAt),
		ExecID:     r.ExecID,
	}, nil
}

// Pids lists the container's processes.
func (s *Service) Pids(ctx context.Context, r *taskAPI.PidsRequest) (*taskAPI.PidsResponse, error) {
	c, err := s.getContainer(r.ID)
	if err != nil {
		return nil, toGRPC(fmt.Errorf("pids: %w", err))
	}
	resp := &taskAPI.PidsResponse{}
	if !c.init.isExited() {
		resp.Processes = append(resp.Processes, &tasktypes.ProcessInfo{Pid: pid()})
	}
	return resp, nil
}

// CloseIO closes a process's stdin.
func (s *Service) CloseIO(ctx context.Context, r *taskAPI.CloseIORequest) (*emptypb.Empty, error) {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, toGRPC(fmt.Errorf("close io: %w", err))
	}
	if r.Stdin {
		p.closeStdin()
	}
	return &emptypb.Empty{}, nil
}

// ResizePty resizes a process's terminal.
func (s *Service) ResizePty(ctx context.Context, r *taskAPI.ResizePtyRequest) (*emptypb.Empty, error) {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, toGRPC(fmt.Errorf("resize pty: %w", err))
	}
	agent, err := s.agent()
	if err != nil {
		return nil, toGRPC(err)
	}
	if _, err := agent.TtyWinResize(ctx, &agentpb.TtyWinResizeRequest{ContainerId: r.ID, ExecId: p.agentExecID(), Row: r.Height, Column: r.Width}); err != nil {
		return nil, toGRPC(fmt.Errorf("resize pty %s %s: agent: %w", r.ID, r.ExecID, grpcerr.FromGRPC(err)))
	}
	return &emptypb.Empty{}, nil
}

// Pause freezes the container.
func (s *Service) Pause(ctx context.Context, r *taskAPI.PauseRequest) (*emptypb.Empty, error) {
	return s.setPaused(ctx, r.ID, true)
}

// Resume thaws the container.
func (s *Service) Resume(ctx context.Context, r *taskAPI.ResumeRequest) (*emptypb.Empty, error) {
	return s.setPaused(ctx, r.ID, false)
}

func (s *Service) setPaused(ctx context.Context, id string, pause bool) (*emptypb.Empty, error) {
	c, err := s.getContainer(id)
	if err != nil {
		return nil, toGRPC(err)
	}
	agent, err := s.agent()
	if err != nil {
		return nil, toGRPC(err)
	}
	if pause {
		_, err = agent.PauseContainer(ctx, &agentpb.PauseContainerRequest{ContainerId: id})
	} else {
		_, err = agent.ResumeContainer(ctx, &agentpb.ResumeContainerRequest{ContainerId: id})
	}
	if err != nil {
		return nil, toGRPC(fmt.Errorf("pause %s (%t): agent: %w", id, pause, grpcerr.FromGRPC(err)))
	}
	c.init.mu.Lock()
	c.init.paused = pause
	c.init.mu.Unlock()
	if pause {
		s.send(runtime.TaskPausedEventTopic, &eventstypes.TaskPaused{ContainerID: id})
	} else {
		s.send(runtime.TaskResumedEventTopic, &eventstypes.TaskResumed{ContainerID: id})
	}
	return &emptypb.Empty{}, nil
}

// Checkpoint is not supported: a confidential guest's memory does not leave it.
func (s *Service) Checkpoint(ctx context.Context, r *taskAPI.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return nil, toGRPC(fmt.Errorf("checkpoint %s: %w", r.ID, errdefs.ErrNotImplemented))
}

// Update changes the container's resources.
func (s *Service) Update(ctx context.Context, r *taskAPI.UpdateTaskRequest) (*emptypb.Empty, error) {
	if _, err := s.getContainer(r.ID); err != nil {
		return nil, toGRPC(fmt.Errorf("update: %w", err))
	}
	if r.Resources == nil {
		return nil, toGRPC(fmt.Errorf("update %s: no resources: %w", r.ID, errdefs.ErrInvalidArgument))
	}
	var res specs.LinuxResources
	if err := json.Unmarshal(r.Resources.Value, &res); err != nil {
		return nil, toGRPC(fmt.Errorf("update %s: resources: %v: %w", r.ID, err, errdefs.ErrInvalidArgument))
	}
	agent, err := s.agent()
	if err != nil {
		return nil, toGRPC(err)
	}
	if _, err := agent.UpdateContainer(ctx, &agentpb.UpdateContainerRequest{ContainerId: r.ID, Resources: sandbox.ToAgentResources(&res)}); err != nil {
		return nil, toGRPC(fmt.Errorf("update %s: agent: %w", r.ID, grpcerr.FromGRPC(err)))
	}
	return &emptypb.Empty{}, nil
}

// Stats returns the container's cgroup statistics in cgroup v1 form.
func (s *Service) Stats(ctx context.Context, r *taskAPI.StatsRequest) (*taskAPI.StatsResponse, error) {
	if _, err := s.getContainer(r.ID); err != nil {
		return nil, toGRPC(fmt.Errorf("stats: %w", err))
	}
	agent, err := s.agent()
	if err != nil {
		return nil, toGRPC(err)
	}
	resp, err := agent.StatsContainer(ctx, &agentpb.StatsContainerRequest{ContainerId: r.ID})
	if err != nil {
		return nil, toGRPC(fmt.Errorf("stats %s: agent: %w", r.ID, grpcerr.FromGRPC(err)))
	}
	any, err := typeurl.MarshalAny(toMetrics(resp))
	if err != nil {
		return nil, toGRPC(fmt.Errorf("stats %s: %w", r.ID, err))
	}
	return &taskAPI.StatsResponse{Stats: protobuf.FromAny(any)}, nil
}

func toMetrics(r *agentpb.StatsContainerResponse) *cgroupsv1.Metrics {
	m := &cgroupsv1.Metrics{}
	cg := r.GetCgroupStats()
	if cg == nil {
		return m
	}
	if c := cg.GetCpuStats().GetCpuUsage(); c != nil {
		m.CPU = &cgroupsv1.CPUStat{Usage: &cgroupsv1.CPUUsage{
			Total: c.TotalUsage, PerCPU: c.PercpuUsage, Kernel: c.UsageInKernelmode, User: c.UsageInUsermode,
		}}
	}
	if mem := cg.GetMemoryStats(); mem != nil {
		m.Memory = &cgroupsv1.MemoryStat{Cache: mem.Cache}
		if u := mem.GetUsage(); u != nil {
			m.Memory.Usage = &cgroupsv1.MemoryEntry{Usage: u.Usage, Max: u.MaxUsage, Failcnt: u.Failcnt, Limit: u.Limit}
		}
	}
	if p := cg.GetPidsStats(); p != nil {
		m.Pids = &cgroupsv1.PidsStat{Current: p.Current, Limit: p.Limit}
	}
	return m
}

// Connect returns the shim's and the task's pids.
func (s *Service) Connect(ctx context.Context, r *taskAPI.ConnectRequest) (*taskAPI.ConnectResponse, error) {
	if _, err := s.getContainer(r.ID); err != nil {
		return nil, toGRPC(fmt.Errorf("connect: %w", err))
	}
	return &taskAPI.ConnectResponse{ShimPid: pid(), TaskPid: pid()}, nil
}

// Shutdown ends the shim once it holds no container.
func (s *Service) Shutdown(ctx context.Context, r *taskAPI.ShutdownRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	n := len(s.containers)
	sb := s.sb
	if n == 0 {
		s.sb = nil
	}
	s.mu.Unlock()
	if n > 0 && !r.Now {
		return &emptypb.Empty{}, nil
	}
	if sb != nil {
		if err := sb.Stop(ctx); err != nil {
			s.log.Warn("stop sandbox on shutdown", "error", err)
		}
	}
	s.opts.Shutdown()
	return &emptypb.Empty{}, nil
}

// Close stops event forwarding after the pending events went out.
func (s *Service) Close() {
	close(s.events)
	<-s.eventsDone
}
