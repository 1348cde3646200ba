package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
)

// SerialConfig tunes ListenSerial. Zero values give the guest defaults.
type SerialConfig struct {
	// SysfsDir lists the virtio ports (default /sys/class/virtio-ports).
	SysfsDir string
	// DevDir holds the port device nodes (default /dev).
	DevDir string
	// PollInterval is the pause before reopening a port whose host side was
	// not connected, and between looks for a port that has not appeared yet
	// (default 100ms).
	PollInterval time.Duration
	// Open opens the device node (default: os.OpenFile read-write).
	Open func(path string) (io.ReadWriteCloser, error)
}

func (c *SerialConfig) defaults() {
	if c.SysfsDir == "" {
		c.SysfsDir = "/sys/class/virtio-ports"
	}
	if c.DevDir == "" {
		c.DevDir = "/dev"
	}
	if c.PollInterval <= 0 {
		c.PollInterval = 100 * time.Millisecond
	}
	if c.Open == nil {
		c.Open = func(path string) (io.ReadWriteCloser, error) {
			return os.OpenFile(path, os.O_RDWR|syscall.O_NOCTTY, 0)
		}
	}
}

// FindVirtioPort returns the device node of the virtio-serial port called
// name, e.g. /dev/vport1p1 for "agent.channel.0".
func FindVirtioPort(sysfsDir, devDir, name string) (string, error) {
	entries, err := os.ReadDir(sysfsDir)
	if err != nil {
		return "", fmt.Errorf("list virtio ports: %w", err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(sysfsDir, e.Name(), "name"))
		if err != nil {
			continue
		}
		if strings.TrimSpace(string(b)) == name {
			return filepath.Join(devDir, e.Name()), nil
		}
	}
	return "", fmt.Errorf("virtio-serial port %q: %w", name, errdefs.ErrNotFound)
}

// ListenSerial serves one connection at a time over the virtio-serial port
// called name. A port carries a single stream, so Accept blocks while a
// connection is open; when the host side is not connected the port reads 0
// bytes, the connection ends with io.EOF, and the next Accept reopens the
// port after PollInterval.
func ListenSerial(ctx context.Context, name string, cfg SerialConfig) (net.Listener, error) {
	if name == "" || strings.ContainsAny(name, "/\x00") {
		return nil, fmt.Errorf("virtio-serial port name %q: %w", name, errdefs.ErrInvalidArgument)
	}
	cfg.defaults()
	l := &serialListener{name: name, cfg: cfg, closed: make(chan struct{}), free: make(chan bool, 1)}
	l.free <- true
	return l, nil
}

type serialListener struct {
	name   string
	cfg    SerialConfig
	closed chan struct{}
	once   sync.Once
	// free holds a value while no connection is open; the value says whether
	// the previous connection carried data (then reopen at once).
	free chan bool
}

func (l *serialListener) Accept() (net.Conn, error) {
	var hadData bool
	select {
	case hadData = <-l.free:
	case <-l.closed:
		return nil, net.ErrClosed
	}
	if !hadData && !l.sleep() {
		return nil, net.ErrClosed
	}
	for {
		path, err := FindVirtioPort(l.cfg.SysfsDir, l.cfg.DevDir, l.name)
		if err == nil {
			f, err := l.cfg.Open(path)
			if err == nil {
				return newPortConn(f, l), nil
			}
		}
		if !l.sleep() {
			return nil, net.ErrClosed
		}
	}
}

// sleep waits PollInterval; false when the listener closed meanwhile.
func (l *serialListener) sleep() bool {
	t := time.NewTimer(l.cfg.PollInterval)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-l.closed:
		return false
	}
}

func (l *serialListener) release(hadData bool) {
	select {
	case l.free <- hadData:
	default:
	}
}

func (l *serialListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *serialListener) Addr() net.Addr { return serialAddr(l.name) }

type serialAddr string

func (a serialAddr) Network() string { return "serial" }
func (a serialAddr) String() string  { return "serial://" + string(a) }

// portConn is a net.Conn over a port device.
type portConn struct {
	f       io.ReadWriteCloser
	l       *serialListener
	once    sync.Once
	mu      sync.Mutex
	hadData bool
}

func newPortConn(f io.ReadWriteCloser, l *serialListener) *portConn {
	return &portConn{f: f, l: l}
}

func (c *portConn) Read(b []byte) (int, error) {
	n, err := c.f.Read(b)
	if n > 0 {
		c.mu.Lock()
		c.hadData = true
		c.mu.Unlock()
		return n, nil
	}
	if err == nil || errors.Is(err, syscall.EIO) {
		// 0 bytes: the host side is not connected (EIO: a pty whose master is gone).
		err = io.EOF
	}
	return 0, err
}

func (c *portConn) Write(b []byte) (int, error) { return c.f.Write(b) }

func (c *portConn) Close() error {
	var err error
	c.once.Do(func() {
		err = c.f.Close()
		c.mu.Lock()
		had := c.hadData
		c.mu.Unlock()
		c.l.release(had)
	})
	return err
}

func (c *portConn) LocalAddr() net.Addr  { return serialAddr(c.l.name) }
func (c *portConn) RemoteAddr() net.Addr { return serialAddr("host") }

type deadliner interface {
	SetDeadline(time.Time) error
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
}

func (c *portConn) SetDeadline(t time.Time) error {
	if d, ok := c.f.(deadliner); ok {
		return d.SetDeadline(t)
	}
	return fmt.Errorf("serial port: deadlines: %w", errdefs.ErrNotImplemented)
}

func (c *portConn) SetReadDeadline(t time.Time) error {
	if d, ok := c.f.(deadliner); ok {
		return d.SetReadDeadline(t)
	}
	return fmt.Errorf("serial port: deadlines: %w", errdefs.ErrNotImplemented)
}

func (c *portConn) SetWriteDeadline(t time.Time) error {
	if d, ok := c.f.(deadliner); ok {
		return d.SetWriteDeadline(t)
	}
	return fmt.Errorf("serial port: deadlines: %w", errdefs.ErrNotImplemented)
}
