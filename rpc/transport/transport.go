// Package transport opens the byte streams that carry the agent's ttrpc
// traffic between host and guest. Addresses are URLs:
//
//	unix://PATH              both sides (tests, the process launcher, QEMU's chardev socket)
//	vsock://CID:PORT         guest listener (CID -1 = any); host dial where a vsock transport exists
//	hvsock://UDS-PATH:PORT   host dial through a cloud-hypervisor/Firecracker hybrid vsock socket
//	serial://PORT-NAME       guest listener on a virtio-serial port (QEMU without vhost-vsock)
//
// The guest default is vsock://-1:1024.
package transport

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
)

// DefaultGuestAddr is where the agent listens when nothing else is configured.
const DefaultGuestAddr = "vsock://-1:1024"

// Scheme names a transport.
type Scheme string

// The supported transports.
const (
	Unix   Scheme = "unix"
	Vsock  Scheme = "vsock"
	HVsock Scheme = "hvsock"
	Serial Scheme = "serial"
)

// Addr is a parsed transport address.
type Addr struct {
	Scheme Scheme
	// Path is the unix socket path (unix, hvsock).
	Path string
	// CID is the vsock context id (vsock); math.MaxUint32 means any.
	CID uint32
	// Port is the vsock port (vsock, hvsock).
	Port uint32
	// Name is the virtio-serial port name (serial).
	Name string
}

// String formats the address in the URL form Parse accepts.
func (a Addr) String() string {
	switch a.Scheme {
	case Unix:
		return "unix://" + a.Path
	case Vsock:
		cid := strconv.FormatUint(uint64(a.CID), 10)
		if a.CID == math.MaxUint32 {
			cid = "-1"
		}
		return fmt.Sprintf("vsock://%s:%d", cid, a.Port)
	case HVsock:
		return fmt.Sprintf("hvsock://%s:%d", a.Path, a.Port)
	case Serial:
		return "serial://" + a.Name
	}
	return string(a.Scheme) + "://?"
}

// Parse parses a transport URL.
func Parse(s string) (Addr, error) {
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return Addr{}, fmt.Errorf("address %q: missing scheme (unix://, vsock://, hvsock://, serial://): %w", s, errdefs.ErrInvalidArgument)
	}
	switch Scheme(scheme) {
	case Unix:
		if rest == "" {
			return Addr{}, fmt.Errorf("address %q: empty socket path: %w", s, errdefs.ErrInvalidArgument)
		}
		return Addr{Scheme: Unix, Path: rest}, nil
	case Vsock:
		cidStr, portStr, ok := strings.Cut(rest, ":")
		if !ok {
			return Addr{}, fmt.Errorf("address %q: want vsock://CID:PORT: %w", s, errdefs.ErrInvalidArgument)
		}
		var cid uint32
		if cidStr == "-1" {
			cid = math.MaxUint32
		} else {
			v, err := strconv.ParseUint(cidStr, 10, 32)
			if err != nil {
				return Addr{}, fmt.Errorf("address %q: bad CID: %w", s, errdefs.ErrInvalidArgument)
			}
			cid = uint32(v)
		}
		port, err := parsePort(portStr)
		if err != nil {
			return Addr{}, fmt.Errorf("address %q: %w", s, err)
		}
		return Addr{Scheme: Vsock, CID: cid, Port: port}, nil
	case HVsock:
		i := strings.LastIndexByte(rest, ':')
		if i <= 0 {
			return Addr{}, fmt.Errorf("address %q: want hvsock://UDS-PATH:PORT: %w", s, errdefs.ErrInvalidArgument)
		}
		port, err := parsePort(rest[i+1:])
		if err != nil {
			return Addr{}, fmt.Errorf("address %q: %w", s, err)
		}
		return Addr{Scheme: HVsock, Path: rest[:i], Port: port}, nil
	case Serial:
		if rest == "" || strings.ContainsAny(rest, "/\x00") {
			return Addr{}, fmt.Errorf("address %q: bad virtio-serial port name: %w", s, errdefs.ErrInvalidArgument)
		}
		return Addr{Scheme: Serial, Name: rest}, nil
	}
	return Addr{}, fmt.Errorf("address %q: unknown scheme %q: %w", s, scheme, errdefs.ErrInvalidArgument)
}

func parsePort(s string) (uint32, error) {
	v, err := strconv.ParseUint(s, 10, 32)
	if err != nil || v == 0 {
		return 0, fmt.Errorf("bad port %q: %w", s, errdefs.ErrInvalidArgument)
	}
	return uint32(v), nil
}

// Listen opens the guest (server) side of a transport.
func Listen(ctx context.Context, addr string) (net.Listener, error) {
	a, err := Parse(addr)
	if err != nil {
		return nil, err
	}
	switch a.Scheme {
	case Unix:
		var lc net.ListenConfig
		l, err := lc.Listen(ctx, "unix", a.Path)
		if err != nil {
			return nil, fmt.Errorf("listen %s: %w", addr, err)
		}
		return l, nil
	case Vsock:
		return listenVsock(a)
	case Serial:
		return ListenSerial(ctx, a.Name, SerialConfig{})
	case HVsock:
		return nil, fmt.Errorf("listen %s: hybrid vsock is a host-side dial transport: %w", addr, errdefs.ErrInvalidArgument)
	}
	return nil, fmt.Errorf("listen %s: %w", addr, errdefs.ErrNotImplemented)
}

// Dial opens the host (client) side of a transport. hvsock dials retry until
// ctx is done; the others make one attempt.
func Dial(ctx context.Context, addr string) (net.Conn, error) {
	a, err := Parse(addr)
	if err != nil {
		return nil, err
	}
	switch a.Scheme {
	case Unix:
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", a.Path)
		if err != nil {
			return nil, fmt.Errorf("dial %s: %w", addr, err)
		}
		return c, nil
	case HVsock:
		return DialHybridVsock(ctx, a.Path, a.Port, HybridVsockOptions{})
	case Vsock:
		return dialVsock(ctx, a)
	case Serial:
		return nil, fmt.Errorf("dial %s: the host reaches a virtio-serial port through QEMU's chardev unix socket; dial unix://SOCKET: %w", addr, errdefs.ErrInvalidArgument)
	}
	return nil, fmt.Errorf("dial %s: %w", addr, errdefs.ErrNotImplemented)
}

// ErrNotListening reports that the VMM answered but nothing listens on the
// guest port yet.
var ErrNotListening = errors.New("nobody listens on the guest port")
