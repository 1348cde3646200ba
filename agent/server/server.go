// Package server implements the agent's ttrpc services, grpc.AgentService
// and grpc.Health, on top of agent/container and the storage, file-copy,
// network and policy components it is given.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cocoon-containers/cocoon/rpc/agentpb"
	"github.com/cocoon-containers/cocoon/rpc/typespb"
)

// storageMounter mounts the storages of a request (agent/storage).
type storageMounter interface {
	// MountStorages mounts the request's storages for owner (a container
	// id, or "" for the sandbox) and returns their guest mount points.
	MountStorages(ctx context.Context, owner string, storages []*agentpb.Storage) ([]string, error)
	// UnmountOwner unmounts everything mounted for owner, in reverse order.
	UnmountOwner(ctx context.Context, owner string) error
}

// fileCopier writes CopyFile chunks (agent/copyfile).
type fileCopier interface {
	CopyFile(ctx context.Context, req *agentpb.CopyFileRequest) error
}

// networker configures guest networking (agent/network).
type networker interface {
	UpdateInterface(ctx context.Context, req *agentpb.UpdateInterfaceRequest) (*typespb.Interface, error)
	UpdateRoutes(ctx context.Context, req *agentpb.UpdateRoutesRequest) (*agentpb.Routes, error)
	ListInterfaces(ctx context.Context, req *agentpb.ListInterfacesRequest) (*agentpb.Interfaces, error)
	ListRoutes(ctx context.Context, req *agentpb.ListRoutesRequest) (*agentpb.Routes, error)
	AddARPNeighbors(ctx context.Context, req *agentpb.AddARPNeighborsRequest) error
}

// policySetter replaces the agent policy (agent/policy).
type policySetter interface {
	SetPolicy(ctx context.Context, req *agentpb.SetPolicyRequest) error
}

// Defaults.
const (
	DefaultRunDir       = "/run/cocoon"
	DefaultCgroupParent = "/cocoon"
	// GRPCVersion is reported by Health.Version.
	GRPCVersion = "0.0.1"
)

// Options configure a Server. Nil components make their RPCs answer
// FailedPrecondition.
type Options struct {
	// Interceptors run after the panic recovery, in order (e.g. policy).
	Interceptors []ttrpc.UnaryServerInterceptor
	Policy       policySetter
	Storage      storageMounter
	Files        fileCopier
	Network      networker

	// RunDir holds the container bundles: RunDir/<container_id>.
	RunDir string
	// CgroupParent is the cgroup containers are created under.
	CgroupParent string
	// PID1 enables the guest-wide effects: hostname, resolv.conf, clock,
	// CPU onlining and power-off. Never set it on a host.
	PID1 bool
	// PowerOff is called after DestroySandbox when PID1 (initsys.PowerOff).
	PowerOff func(ctx context.Context)
	// NoPivotRoot makes containers use MS_MOVE instead of pivot_root.
	NoPivotRoot bool
	// SysfsRoot and ProcRoot locate /sys and /proc (tests point them at
	// fakes); ResolvConf is the guest's /etc/resolv.conf.
	SysfsRoot  string
	ProcRoot   string
	ResolvConf string
	// RandomDevice receives ReseedRandomDev data (default /dev/random).
	RandomDevice string
	// Version is the agent version reported to the host.
	Version string
	Logger  *slog.Logger
}

// Server serves the agent API.
type Server struct {
	opts Options
	log  *slog.Logger
	srv  *ttrpc.Server

	mu         sync.Mutex
	containers map[string]*entry
	sandbox    sandboxState

	oom chan string
}

type sandboxState struct {
	created  bool
	id       string
	hostname string
}

const oomQueue = 128

// New builds a server; Serve starts it.
func New(ctx context.Context, opts Options) (*Server, error) {
	if opts.RunDir == "" {
		opts.RunDir = DefaultRunDir
	}
	if opts.CgroupParent == "" {
		opts.CgroupParent = DefaultCgroupParent
	}
	if opts.SysfsRoot == "" {
		opts.SysfsRoot = "/sys"
	}
	if opts.ProcRoot == "" {
		opts.ProcRoot = "/proc"
	}
	if opts.ResolvConf == "" {
		opts.ResolvConf = "/etc/resolv.conf"
	}
	if opts.RandomDevice == "" {
		opts.RandomDevice = "/dev/random"
	}
	if opts.Version == "" {
		opts.Version = "devel"
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	s := &Server{
		opts:       opts,
		log:        log,
		containers: map[string]*entry{},
		oom:        make(chan string, oomQueue),
	}
	chain := append([]ttrpc.UnaryServerInterceptor{s.recoverInterceptor}, opts.Interceptors...)
	chain = append(chain, statusInterceptor)
	srv, err := ttrpc.NewServer(ttrpc.WithChainUnaryServerInterceptor(chain...))
	if err != nil {
		return nil, fmt.Errorf("new ttrpc server: %w", err)
	}
	agentpb.RegisterAgentServiceService(srv, s)
	agentpb.RegisterHealthService(srv, health{s})
	s.srv = srv
	return s, nil
}

// Serve serves l until ctx is done or Close is called.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	stop := context.AfterFunc(ctx, func() { s.srv.Close() })
	defer stop()
	err := s.srv.Serve(ctx, l)
	if errors.Is(err, ttrpc.ErrServerClosed) {
		return nil
	}
	return err
}

// Close stops serving; it does not touch containers (see Cleanup).
func (s *Server) Close() error {
	return s.srv.Close()
}

// Cleanup removes every container and unmounts the sandbox's storages, as
// DestroySandbox does, without powering off.
func (s *Server) Cleanup(ctx context.Context) error {
	return s.destroyAll(ctx)
}

func (s *Server) recoverInterceptor(ctx context.Context, unmarshal ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, method ttrpc.Method) (resp any, err error) {
	defer func() {
		if r := recover(); r != nil {
			s.log.ErrorContext(ctx, "panic in request handler", "method", info.FullMethod, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			resp, err = nil, status.Errorf(codes.Internal, "%s: internal error", info.FullMethod)
		}
	}()
	return method(ctx, unmarshal)
}

// statusInterceptor converts errdefs-classed errors to gRPC statuses at the
// ttrpc boundary.
func statusInterceptor(ctx context.Context, unmarshal ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, method ttrpc.Method) (any, error) {
	resp, err := method(ctx, unmarshal)
	if err != nil {
		return nil, toStatus(err)
	}
	return resp, nil
}

func toStatus(err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	code := codes.Unknown
	switch {
	case errors.Is(err, errdefs.ErrInvalidArgument):
		code = codes.InvalidArgument
	case errors.Is(err, errdefs.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, errdefs.ErrAlreadyExists):
		code = codes.AlreadyExists
	case errors.Is(err, errdefs.ErrFailedPrecondition), errors.Is(err, errdefs.ErrConflict):
		code = codes.FailedPrecondition
	case errors.Is(err, errdefs.ErrPermissionDenied):
		code = codes.PermissionDenied
	case errors.Is(err, errdefs.ErrResourceExhausted):
		code = codes.ResourceExhausted
	case errors.Is(err, errdefs.ErrOutOfRange):
		code = codes.OutOfRange
	case errors.Is(err, errdefs.ErrNotImplemented):
		code = codes.Unimplemented
	case errors.Is(err, errdefs.ErrUnavailable):
		code = codes.Unavailable
	case errors.Is(err, errdefs.ErrAborted):
		code = codes.Aborted
	case errors.Is(err, errdefs.ErrInternal):
		code = codes.Internal
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	}
	return status.Error(code, err.Error())
}

type health struct{ s *Server }

func (h health) Check(ctx context.Context, req *agentpb.CheckRequest) (*agentpb.HealthCheckResponse, error) {
	return &agentpb.HealthCheckResponse{Status: agentpb.HealthCheckResponse_SERVING}, nil
}

func (h health) Version(ctx context.Context, req *agentpb.CheckRequest) (*agentpb.VersionCheckResponse, error) {
	return &agentpb.VersionCheckResponse{GrpcVersion: GRPCVersion, AgentVersion: h.s.opts.Version}, nil
}

func unimplemented(rpc string) error {
	return fmt.Errorf("%s is not implemented by the cocoon agent: %w", rpc, errdefs.ErrNotImplemented)
}

func missing(rpc, what string) error {
	return fmt.Errorf("%s: no %s: %w", rpc, what, errdefs.ErrFailedPrecondition)
}
