package transport

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// fakePorts lays out a sysfs directory and a dev directory holding one
// virtio port called name whose node links to target.
func fakePorts(t *testing.T, name, target string) (sysfs, dev string) {
	t.Helper()
	root := t.TempDir()
	sysfs, dev = filepath.Join(root, "sys"), filepath.Join(root, "dev")
	for _, p := range []struct{ port, name string }{{"vport0p0", "console.0"}, {"vport1p1", name}} {
		if err := os.MkdirAll(filepath.Join(sysfs, p.port), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(sysfs, p.port, "name"), []byte(p.name+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(dev, 0o755); err != nil {
		t.Fatal(err)
	}
	if target != "" {
		if err := os.Symlink(target, filepath.Join(dev, "vport1p1")); err != nil {
			t.Fatal(err)
		}
	}
	return sysfs, dev
}

func TestFindVirtioPort(t *testing.T) {
	sysfs, dev := fakePorts(t, "agent.channel.0", "")
	got, err := FindVirtioPort(sysfs, dev, "agent.channel.0")
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dev, "vport1p1"); got != want {
		t.Fatalf("port = %q, want %q", got, want)
	}
	if _, err := FindVirtioPort(sysfs, dev, "other"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("unknown port error = %v, want not found", err)
	}
}

// openPty returns a pty master and the path of its slave, in raw mode so
// that bytes pass unchanged like on a virtio port.
func openPty(t *testing.T) (*os.File, string) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pty support: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	tio, err := unix.IoctlGetTermios(int(m.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	tio.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	tio.Oflag &^= unix.OPOST
	tio.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	tio.Cflag &^= unix.CSIZE | unix.PARENB
	tio.Cflag |= unix.CS8
	tio.Cc[unix.VMIN], tio.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(int(m.Fd()), unix.TCSETS, tio); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m, "/dev/pts/" + itoa(n)
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}

// fileConn lets the test's host side speak ttrpc over the pty master.
type fileConn struct{ *os.File }

func (fileConn) LocalAddr() net.Addr  { return serialAddr("test") }
func (fileConn) RemoteAddr() net.Addr { return serialAddr("test") }

func TestSerialRoundTripOverPty(t *testing.T) {
	master, slave := openPty(t)
	sysfs, dev := fakePorts(t, "agent.channel.0", slave)
	l, err := ListenSerial(context.Background(), "agent.channel.0", SerialConfig{SysfsDir: sysfs, DevDir: dev, PollInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	serveHealth(t, l)
	checkHealth(t, fileConn{master})
}

// disconnectedPort reads 0 bytes, like a virtio port whose host side is not
// connected.
type disconnectedPort struct{ io.ReadWriteCloser }

func (disconnectedPort) Read([]byte) (int, error) { return 0, nil }

func TestSerialReopensWhileHostDisconnected(t *testing.T) {
	sysfs, dev := fakePorts(t, "agent.channel.0", "/dev/null")
	var opens atomic.Int32
	cfg := SerialConfig{SysfsDir: sysfs, DevDir: dev, PollInterval: time.Millisecond,
		Open: func(path string) (io.ReadWriteCloser, error) {
			opens.Add(1)
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			return disconnectedPort{f}, err
		}}
	l, err := ListenSerial(context.Background(), "agent.channel.0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for i := 0; i < 3; i++ {
		c, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		n, err := c.Read(make([]byte, 16))
		if n != 0 || !errors.Is(err, io.EOF) {
			t.Fatalf("read on a disconnected port = %d, %v; want 0, EOF", n, err)
		}
		c.Close()
	}
	if got, want := opens.Load(), int32(3); got != want {
		t.Fatalf("opens = %d, want %d", got, want)
	}
}

func TestSerialAcceptBlocksWhileConnectionOpen(t *testing.T) {
	sysfs, dev := fakePorts(t, "agent.channel.0", "/dev/null")
	l, err := ListenSerial(context.Background(), "agent.channel.0", SerialConfig{SysfsDir: sysfs, DevDir: dev, PollInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	second := make(chan error, 1)
	go func() {
		c2, err := l.Accept()
		if err == nil {
			c2.Close()
		}
		second <- err
	}()
	select {
	case err := <-second:
		t.Fatalf("second Accept returned (%v) while the first connection is open", err)
	case <-time.After(50 * time.Millisecond):
	}
	c.Close()
	if err := <-second; err != nil {
		t.Fatalf("second Accept after close: %v", err)
	}
	l.Close()
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close = %v, want net.ErrClosed", err)
	}
}

func TestSerialWaitsForPortToAppear(t *testing.T) {
	sysfs, dev := fakePorts(t, "agent.channel.0", "")
	l, err := ListenSerial(context.Background(), "agent.channel.0", SerialConfig{SysfsDir: sysfs, DevDir: dev, PollInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	got := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			c.Close()
		}
		got <- err
	}()
	time.Sleep(20 * time.Millisecond)
	if err := os.Symlink("/dev/null", filepath.Join(dev, "vport1p1")); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Accept did not notice the port appearing")
	}
}
