// Package network configures the guest's network over rtnetlink, with the
// semantics of the Kata agent's UpdateInterface, UpdateRoutes,
// ListInterfaces, ListRoutes and AddARPNeighbors.
//
// Every request is validated in full before the kernel is touched; errors
// carry an errdefs class (InvalidArgument for malformed input, NotFound for
// unknown devices, and a class derived from the kernel's errno otherwise).
package network

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// socketTimeout bounds every netlink exchange so that a wedged kernel
// request cannot hang an RPC forever.
const socketTimeout = 10 * time.Second

// Network answers the agent's networking RPCs. Its methods are safe for
// concurrent use; requests are applied one at a time.
type Network struct {
	mu      sync.Mutex
	h       *netlink.Handle
	openErr error
}

// New returns a Network for the network namespace the calling thread is in
// (the guest's own namespace when called from the agent's main goroutine).
// The netlink socket is opened here, so that later calls do not depend on
// which thread they run on.
func New() *Network {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return &Network{openErr: fmt.Errorf("open rtnetlink socket: %w: %w", err, errdefs.ErrUnavailable)}
	}
	n := &Network{h: h}
	if err := h.SetSocketTimeout(socketTimeout); err != nil {
		h.Close()
		return &Network{openErr: fmt.Errorf("set rtnetlink socket timeout: %w: %w", err, errdefs.ErrUnavailable)}
	}
	return n
}

// NewInNamespace returns a Network that works in the network namespace ns
// (tests use it with a fresh namespace). ns may be closed afterwards: the
// Network's socket keeps the namespace alive until Close.
func NewInNamespace(ns netns.NsHandle) (*Network, error) {
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open rtnetlink socket in namespace %s: %w", ns, err)
	}
	if err := h.SetSocketTimeout(socketTimeout); err != nil {
		h.Close()
		return nil, fmt.Errorf("set rtnetlink socket timeout: %w", err)
	}
	return &Network{h: h}, nil
}

// Close releases the netlink socket. Calls after Close fail.
func (n *Network) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.h != nil {
		n.h.Close()
		n.h = nil
	}
	if n.openErr == nil {
		n.openErr = fmt.Errorf("network handler is closed: %w", errdefs.ErrUnavailable)
	}
	return nil
}

// begin takes the lock for one request and returns the handle, or why there
// is none.
func (n *Network) begin(ctx context.Context) (*netlink.Handle, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	n.mu.Lock()
	if n.h == nil {
		n.mu.Unlock()
		if n.openErr != nil {
			return nil, n.openErr
		}
		return nil, fmt.Errorf("network handler has no netlink socket: %w", errdefs.ErrUnavailable)
	}
	return n.h, nil
}

func (n *Network) end() { n.mu.Unlock() }

// kernelError is a failed netlink request: its message is the operation
// and the kernel's answer, and it matches both the errno and the errdefs
// class derived from it.
type kernelError struct {
	op    string
	err   error
	class error
}

func (e *kernelError) Error() string   { return e.op + ": " + e.err.Error() }
func (e *kernelError) Unwrap() []error { return []error{e.err, e.class} }

// kernelErr wraps err from a netlink request described by op (lowercase,
// with the objects involved).
func kernelErr(op string, err error) error {
	if err == nil {
		return nil
	}
	return &kernelError{op: op, err: err, class: classify(err)}
}

// classify maps a kernel errno to an errdefs class.
func classify(err error) error {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		var lnf netlink.LinkNotFoundError
		if errors.As(err, &lnf) {
			return errdefs.ErrNotFound
		}
		return errdefs.ErrUnknown
	}
	switch errno {
	case unix.EINVAL, unix.ERANGE, unix.EAFNOSUPPORT, unix.EOPNOTSUPP, unix.EADDRNOTAVAIL:
		return errdefs.ErrInvalidArgument
	case unix.ENODEV, unix.ENOENT, unix.ESRCH, unix.ENXIO:
		return errdefs.ErrNotFound
	case unix.EEXIST, unix.EADDRINUSE:
		return errdefs.ErrAlreadyExists
	case unix.ENETUNREACH, unix.EHOSTUNREACH, unix.ENETDOWN, unix.EBUSY:
		return errdefs.ErrFailedPrecondition
	case unix.EPERM, unix.EACCES:
		return errdefs.ErrPermissionDenied
	case unix.ENOMEM, unix.ENOBUFS, unix.ENOSPC:
		return errdefs.ErrResourceExhausted
	case unix.EAGAIN, unix.EINTR:
		return errdefs.ErrUnavailable
	}
	return errdefs.ErrUnknown
}

// invalid returns an InvalidArgument error with a formatted message.
func invalid(format string, args ...any) error {
	return fmt.Errorf(format+": %w", append(args, errdefs.ErrInvalidArgument)...)
}

// dumpRetries bounds the retries of a dump the kernel reports as
// interrupted (the table changed while it was read).
const dumpRetries = 5

// retryDump runs a netlink dump until it is not interrupted, a few times.
func retryDump[T any](dump func() (T, error)) (T, error) {
	var (
		v   T
		err error
	)
	for range dumpRetries {
		v, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return v, err
}
