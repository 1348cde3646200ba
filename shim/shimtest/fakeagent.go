// Package shimtest holds test support for the shim: a fake guest agent that
// runs processes on the host (optionally chrooted into the container's
// rootfs), a launcher that serves it in-process, and a harness that runs
// Debian's containerd with the shim registered.
package shimtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/cocoon-containers/cocoon/rpc/agentpb"
	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
)

// Request is one call the fake agent received.
type Request struct {
	Method string
	Msg    proto.Message
}

// Agent is a fake guest agent. Methods it does not implement answer
// Unimplemented. Processes run on the host; with Chroot they run inside the
// spec's root path.
type Agent struct {
	// The embedded interface is nil: calls to methods not defined below are
	// caught by the server's recover interceptor and answered Unimplemented.
	agentpb.AgentServiceService

	// Chroot runs container processes inside OCI.Root.Path.
	Chroot bool
	// MapPath turns a guest path into the host path it stands for.
	MapPath func(string) string
	// Deny maps a method name to the error it returns, like a policy would.
	Deny map[string]error

	mu         sync.Mutex
	requests   []Request
	containers map[string]*fakeContainer
	policy     string
	destroyed  bool
}

type fakeContainer struct {
	req   *agentpb.CreateContainerRequest
	procs map[string]*fakeProc
}

type fakeProc struct {
	spec   *agentpb.Process
	cmd    *exec.Cmd
	stdin  *os.File
	tty    *os.File
	stdout *stream
	stderr *stream
	done   chan struct{}
	status int32
}

// NewAgent returns an empty fake agent.
func NewAgent() *Agent {
	return &Agent{containers: map[string]*fakeContainer{}, Deny: map[string]error{}}
}

// Serve answers ttrpc on l until ctx ends.
func (a *Agent) Serve(ctx context.Context, l net.Listener) error {
	srv, err := ttrpc.NewServer(ttrpc.WithUnaryServerInterceptor(recoverUnimplemented))
	if err != nil {
		return err
	}
	agentpb.RegisterAgentServiceService(srv, a)
	agentpb.RegisterHealthService(srv, healthService{})
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	err = srv.Serve(ctx, l)
	if errors.Is(err, ttrpc.ErrServerClosed) {
		return nil
	}
	return err
}

func recoverUnimplemented(ctx context.Context, um ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, h ttrpc.Method) (_ any, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = status.Errorf(codes.Unimplemented, "%s is not implemented by the fake agent", info.FullMethod)
		}
	}()
	return h(ctx, um)
}

type healthService struct{}

func (healthService) Check(context.Context, *agentpb.CheckRequest) (*agentpb.HealthCheckResponse, error) {
	return &agentpb.HealthCheckResponse{Status: agentpb.HealthCheckResponse_SERVING}, nil
}

func (healthService) Version(context.Context, *agentpb.CheckRequest) (*agentpb.VersionCheckResponse, error) {
	return &agentpb.VersionCheckResponse{GrpcVersion: "fake", AgentVersion: "fake"}, nil
}

// Requests returns the calls received so far, in order.
func (a *Agent) Requests() []Request {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]Request(nil), a.requests...)
}

// Policy returns the document received by SetPolicy.
func (a *Agent) Policy() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.policy
}

func (a *Agent) record(method string, m proto.Message) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.requests = append(a.requests, Request{Method: method, Msg: proto.Clone(m)})
	if err := a.Deny[method]; err != nil {
		return err
	}
	return nil
}

var empty = &emptypb.Empty{}

func (a *Agent) SetPolicy(ctx context.Context, r *agentpb.SetPolicyRequest) (*emptypb.Empty, error) {
	if err := a.record("SetPolicy", r); err != nil {
		return nil, err
	}
	a.mu.Lock()
	a.policy = r.Policy
	a.mu.Unlock()
	return empty, nil
}

func (a *Agent) CreateSandbox(ctx context.Context, r *agentpb.CreateSandboxRequest) (*emptypb.Empty, error) {
	return empty, a.record("CreateSandbox", r)
}

func (a *Agent) DestroySandbox(ctx context.Context, r *agentpb.DestroySandboxRequest) (*emptypb.Empty, error) {
	if err := a.record("DestroySandbox", r); err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, c := range a.containers {
		for _, p := range c.procs {
			p.kill(syscall.SIGKILL)
		}
	}
	a.destroyed = true
	return empty, nil
}

func (a *Agent) CopyFile(ctx context.Context, r *agentpb.CopyFileRequest) (*emptypb.Empty, error) {
	return empty, a.record("CopyFile", r)
}

func (a *Agent) CreateContainer(ctx context.Context, r *agentpb.CreateContainerRequest) (*emptypb.Empty, error) {
	if err := a.record("CreateContainer", r); err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.containers[r.ContainerId]; ok {
		return nil, status.Errorf(codes.AlreadyExists, "container %s exists", r.ContainerId)
	}
	if r.OCI == nil || r.OCI.Process == nil {
		return nil, status.Errorf(codes.InvalidArgument, "container %s: no process", r.ContainerId)
	}
	c := &fakeContainer{req: r, procs: map[string]*fakeProc{}}
	p, err := a.prepare(r.OCI, r.OCI.Process)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "container %s: %v", r.ContainerId, err)
	}
	c.procs[r.ContainerId] = p
	a.containers[r.ContainerId] = c
	return empty, nil
}

func (a *Agent) StartContainer(ctx context.Context, r *agentpb.StartContainerRequest) (*emptypb.Empty, error) {
	if err := a.record("StartContainer", r); err != nil {
		return nil, err
	}
	p, err := a.proc(r.ContainerId, "")
	if err != nil {
		return nil, err
	}
	if err := p.start(); err != nil {
		return nil, status.Errorf(codes.Internal, "start container %s: %v", r.ContainerId, err)
	}
	return empty, nil
}

func (a *Agent) ExecProcess(ctx context.Context, r *agentpb.ExecProcessRequest) (*emptypb.Empty, error) {
	if err := a.record("ExecProcess", r); err != nil {
		return nil, err
	}
	a.mu.Lock()
	c, ok := a.containers[r.ContainerId]
	if !ok {
		a.mu.Unlock()
		return nil, status.Errorf(codes.NotFound, "container %s", r.ContainerId)
	}
	if _, ok := c.procs[r.ExecId]; ok {
		a.mu.Unlock()
		return nil, status.Errorf(codes.AlreadyExists, "exec %s", r.ExecId)
	}
	p, err := a.prepare(c.req.OCI, r.Process)
	if err != nil {
		a.mu.Unlock()
		return nil, status.Errorf(codes.Internal, "exec %s: %v", r.ExecId, err)
	}
	c.procs[r.ExecId] = p
	a.mu.Unlock()
	if err := p.start(); err != nil {
		return nil, status.Errorf(codes.Internal, "exec %s: %v", r.ExecId, err)
	}
	return empty, nil
}

func (a *Agent) SignalProcess(ctx context.Context, r *agentpb.SignalProcessRequest) (*emptypb.Empty, error) {
	if err := a.record("SignalProcess", r); err != nil {
		return nil, err
	}
	p, err := a.proc(r.ContainerId, r.ExecId)
	if err != nil {
		return nil, err
	}
	p.kill(syscall.Signal(r.Signal))
	return empty, nil
}

func (a *Agent) WaitProcess(ctx context.Context, r *agentpb.WaitProcessRequest) (*agentpb.WaitProcessResponse, error) {
	if err := a.record("WaitProcess", r); err != nil {
		return nil, err
	}
	p, err := a.proc(r.ContainerId, r.ExecId)
	if err != nil {
		return nil, err
	}
	select {
	case <-p.done:
		return &agentpb.WaitProcessResponse{Status: p.status}, nil
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

func (a *Agent) ReadStdout(ctx context.Context, r *agentpb.ReadStreamRequest) (*agentpb.ReadStreamResponse, error) {
	return a.read(ctx, "ReadStdout", r, func(p *fakeProc) *stream { return p.stdout })
}

func (a *Agent) ReadStderr(ctx context.Context, r *agentpb.ReadStreamRequest) (*agentpb.ReadStreamResponse, error) {
	return a.read(ctx, "ReadStderr", r, func(p *fakeProc) *stream { return p.stderr })
}

func (a *Agent) read(ctx context.Context, method string, r *agentpb.ReadStreamRequest, pick func(*fakeProc) *stream) (*agentpb.ReadStreamResponse, error) {
	if err := a.record(method, r); err != nil {
		return nil, err
	}
	p, err := a.proc(r.ContainerId, r.ExecId)
	if err != nil {
		return nil, err
	}
	n := int(min(r.Len, 1<<20))
	data, err := pick(p).read(ctx, n)
	if err != nil {
		return nil, status.FromContextError(err).Err()
	}
	return &agentpb.ReadStreamResponse{Data: data}, nil
}

func (a *Agent) WriteStdin(ctx context.Context, r *agentpb.WriteStreamRequest) (*agentpb.WriteStreamResponse, error) {
	if err := a.record("WriteStdin", r); err != nil {
		return nil, err
	}
	p, err := a.proc(r.ContainerId, r.ExecId)
	if err != nil {
		return nil, err
	}
	w := p.stdin
	if p.tty != nil {
		w = p.tty
	}
	if w == nil {
		return nil, status.Errorf(codes.FailedPrecondition, "stdin closed")
	}
	n, err := w.Write(r.Data)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "write stdin: %v", err)
	}
	return &agentpb.WriteStreamResponse{Len: uint32(n)}, nil
}

func (a *Agent) CloseStdin(ctx context.Context, r *agentpb.CloseStdinRequest) (*emptypb.Empty, error) {
	if err := a.record("CloseStdin", r); err != nil {
		return nil, err
	}
	p, err := a.proc(r.ContainerId, r.ExecId)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if p.stdin != nil {
		p.stdin.Close()
		p.stdin = nil
	}
	if p.tty != nil {
		// End of input on a terminal: the line discipline's EOF character.
		_, _ = p.tty.Write([]byte{4})
	}
	return empty, nil
}

func (a *Agent) TtyWinResize(ctx context.Context, r *agentpb.TtyWinResizeRequest) (*emptypb.Empty, error) {
	if err := a.record("TtyWinResize", r); err != nil {
		return nil, err
	}
	p, err := a.proc(r.ContainerId, r.ExecId)
	if err != nil {
		return nil, err
	}
	if p.tty == nil {
		return nil, status.Errorf(codes.FailedPrecondition, "process has no terminal")
	}
	if err := setWinsize(p.tty, uint16(r.Row), uint16(r.Column)); err != nil {
		return nil, status.Errorf(codes.Internal, "resize: %v", err)
	}
	return empty, nil
}

func (a *Agent) PauseContainer(ctx context.Context, r *agentpb.PauseContainerRequest) (*emptypb.Empty, error) {
	return a.signalAll("PauseContainer", r, r.ContainerId, syscall.SIGSTOP)
}

func (a *Agent) ResumeContainer(ctx context.Context, r *agentpb.ResumeContainerRequest) (*emptypb.Empty, error) {
	return a.signalAll("ResumeContainer", r, r.ContainerId, syscall.SIGCONT)
}

func (a *Agent) signalAll(method string, m proto.Message, id string, sig syscall.Signal) (*emptypb.Empty, error) {
	if err := a.record(method, m); err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	c, ok := a.containers[id]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "container %s", id)
	}
	for _, p := range c.procs {
		p.kill(sig)
	}
	return empty, nil
}

func (a *Agent) StatsContainer(ctx context.Context, r *agentpb.StatsContainerRequest) (*agentpb.StatsContainerResponse, error) {
	if err := a.record("StatsContainer", r); err != nil {
		return nil, err
	}
	if _, err := a.proc(r.ContainerId, ""); err != nil {
		return nil, err
	}
	return &agentpb.StatsContainerResponse{CgroupStats: &agentpb.CgroupStats{MemoryStats: &agentpb.MemoryStats{Usage: &agentpb.MemoryData{Usage: 4096}}}}, nil
}

func (a *Agent) UpdateContainer(ctx context.Context, r *agentpb.UpdateContainerRequest) (*emptypb.Empty, error) {
	if err := a.record("UpdateContainer", r); err != nil {
		return nil, err
	}
	if _, err := a.proc(r.ContainerId, ""); err != nil {
		return nil, err
	}
	return empty, nil
}

func (a *Agent) RemoveContainer(ctx context.Context, r *agentpb.RemoveContainerRequest) (*emptypb.Empty, error) {
	if err := a.record("RemoveContainer", r); err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	c, ok := a.containers[r.ContainerId]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "container %s", r.ContainerId)
	}
	for _, p := range c.procs {
		p.kill(syscall.SIGKILL)
	}
	delete(a.containers, r.ContainerId)
	return empty, nil
}

func (a *Agent) proc(cid, eid string) (*fakeProc, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	c, ok := a.containers[cid]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "container %s", cid)
	}
	if eid == "" {
		eid = cid
	}
	p, ok := c.procs[eid]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "process %s in container %s", eid, cid)
	}
	return p, nil
}

// prepare builds the host command for a process of a container.
func (a *Agent) prepare(spec *agentpb.Spec, ps *agentpb.Process) (*fakeProc, error) {
	if len(ps.Args) == 0 {
		return nil, fmt.Errorf("no args")
	}
	cmd := exec.Command(ps.Args[0], ps.Args[1:]...)
	cmd.Env = ps.Env
	cmd.Dir = ps.Cwd
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if a.Chroot && spec.Root != nil && spec.Root.Path != "" {
		root := spec.Root.Path
		if a.MapPath != nil {
			root = a.MapPath(root)
		}
		cmd.SysProcAttr.Chroot = root
		// exec.Command resolved the path on the host; resolve it in the root.
		cmd.Path = lookPathIn(root, ps.Args[0], ps.Env)
		cmd.Err = nil
		if cmd.Dir == "" {
			cmd.Dir = "/"
		}
	}
	p := &fakeProc{spec: ps, cmd: cmd, stdout: newStream(), stderr: newStream(), done: make(chan struct{})}
	return p, nil
}

func (p *fakeProc) start() error {
	if p.spec.Terminal {
		return p.startTTY()
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		return err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		return err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		return err
	}
	p.cmd.Stdin, p.cmd.Stdout, p.cmd.Stderr = inR, outW, errW
	err = p.cmd.Start()
	inR.Close()
	outW.Close()
	errW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		errR.Close()
		p.stdout.close()
		p.stderr.close()
		return err
	}
	p.stdin = inW
	var copies sync.WaitGroup
	copies.Add(2)
	go func() { defer copies.Done(); p.stdout.fill(outR) }()
	go func() { defer copies.Done(); p.stderr.fill(errR) }()
	go p.wait(&copies)
	return nil
}

func (p *fakeProc) wait(copies *sync.WaitGroup) {
	err := p.cmd.Wait()
	var code int32
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int32(ws.Signal())
		} else {
			code = int32(ee.ExitCode())
		}
	}
	copies.Wait()
	p.status = code
	close(p.done)
}

func (p *fakeProc) kill(sig syscall.Signal) {
	if p.cmd.Process == nil {
		return
	}
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(sig)
}

// stream buffers a process's output for blocking pulls.
type stream struct {
	mu     sync.Mutex
	cond   *sync.Cond
	buf    bytes.Buffer
	closed bool
}

func newStream() *stream {
	s := &stream{}
	s.cond = sync.NewCond(&s.mu)
	return s
}

func (s *stream) fill(f *os.File) {
	defer f.Close()
	b := make([]byte, 32<<10)
	for {
		n, err := f.Read(b)
		if n > 0 {
			s.mu.Lock()
			s.buf.Write(b[:n])
			s.cond.Broadcast()
			s.mu.Unlock()
		}
		if err != nil {
			s.close()
			return
		}
	}
}

func (s *stream) close() {
	s.mu.Lock()
	s.closed = true
	s.cond.Broadcast()
	s.mu.Unlock()
}

// read blocks until data or end of stream; empty data means end of stream.
func (s *stream) read(ctx context.Context, n int) ([]byte, error) {
	stop := context.AfterFunc(ctx, func() {
		s.mu.Lock()
		s.cond.Broadcast()
		s.mu.Unlock()
	})
	defer stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.buf.Len() == 0 && !s.closed {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		s.cond.Wait()
	}
	out := make([]byte, min(n, s.buf.Len()))
	_, _ = s.buf.Read(out)
	return out, nil
}

// lookPathIn resolves name along the process's PATH inside root.
func lookPathIn(root, name string, env []string) string {
	if strings.Contains(name, "/") {
		return name
	}
	path := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range strings.Split(path, ":") {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(filepath.Join(root, p)); err == nil && !fi.IsDir() {
			return p
		}
		if _, err := os.Lstat(filepath.Join(root, p)); err == nil {
			return p
		}
	}
	return name
}
