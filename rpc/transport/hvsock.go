package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
)

// HybridVsockOptions tunes DialHybridVsock.
type HybridVsockOptions struct {
	// HandshakeTimeout bounds one CONNECT/OK exchange (default 5s).
	HandshakeTimeout time.Duration
	// RetryInterval is the pause between attempts (default 50ms, doubling to 1s).
	RetryInterval time.Duration
}

// maxHandshakeLine bounds the VMM's reply line.
const maxHandshakeLine = 128

// errGarbage marks a reply that is not a hybrid vsock answer; retrying will
// not help.
var errGarbage = errors.New("unexpected hybrid vsock reply")

// DialHybridVsock connects to guest port through a cloud-hypervisor or
// Firecracker hybrid vsock socket: it writes "CONNECT <port>\n" and expects a
// line starting with "OK". The VMM closes the socket when nothing listens on
// the port yet (EOF); that, a missing socket and a slow reply are retried until
// ctx is done. A reply that is not "OK ..." fails at once.
func DialHybridVsock(ctx context.Context, udsPath string, port uint32, opts HybridVsockOptions) (net.Conn, error) {
	if opts.HandshakeTimeout <= 0 {
		opts.HandshakeTimeout = 5 * time.Second
	}
	wait := opts.RetryInterval
	if wait <= 0 {
		wait = 50 * time.Millisecond
	}
	var last error
	for attempt := 1; ; attempt++ {
		c, err := hybridVsockAttempt(ctx, udsPath, port, opts.HandshakeTimeout)
		if err == nil {
			return c, nil
		}
		if errors.Is(err, errGarbage) {
			return nil, fmt.Errorf("dial hvsock %s port %d: %w", udsPath, port, err)
		}
		last = err
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("dial hvsock %s port %d: gave up after %d attempts: %w (last: %v)",
				udsPath, port, attempt, errdefs.ErrUnavailable, last)
		case <-t.C:
		}
		if wait < time.Second {
			wait *= 2
		}
	}
}

func hybridVsockAttempt(ctx context.Context, udsPath string, port uint32, timeout time.Duration) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", udsPath)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := c.SetDeadline(deadline); err != nil {
		c.Close()
		return nil, err
	}
	if _, err := fmt.Fprintf(c, "CONNECT %d\n", port); err != nil {
		c.Close()
		return nil, fmt.Errorf("send CONNECT: %w", err)
	}
	line, err := readLine(c)
	if err != nil {
		c.Close()
		if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
			return nil, fmt.Errorf("%w (the VMM closed the connection)", ErrNotListening)
		}
		return nil, fmt.Errorf("read CONNECT reply: %w", err)
	}
	if !strings.HasPrefix(line, "OK") {
		c.Close()
		return nil, fmt.Errorf("%w %q", errGarbage, line)
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// readLine reads up to and including '\n' one byte at a time so that nothing
// after the reply (the first bytes of the ttrpc stream) is consumed.
func readLine(r io.Reader) (string, error) {
	var buf [maxHandshakeLine]byte
	var b [1]byte
	n := 0
	for {
		if _, err := io.ReadFull(r, b[:]); err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				err = io.EOF
			}
			return "", err
		}
		if b[0] == '\n' {
			return strings.TrimRight(string(buf[:n]), "\r"), nil
		}
		if n == len(buf) {
			return "", fmt.Errorf("%w: reply longer than %d bytes", errGarbage, maxHandshakeLine)
		}
		buf[n] = b[0]
		n++
	}
}
