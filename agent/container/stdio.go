package container

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// outBufferLimit bounds what the agent buffers per output stream when
// nobody reads; beyond it the process blocks on write, as with a pipe.
const outBufferLimit = 1 << 20

// outStream pumps a process's output into a bounded buffer so that output
// survives the process and can be pulled later with ReadStdout/ReadStderr.
type outStream struct {
	mu      sync.Mutex
	buf     []byte
	eof     bool
	closed  bool
	changed chan struct{}
	done    chan struct{}
}

func newOutStream(r io.ReadCloser) *outStream {
	s := &outStream{changed: make(chan struct{}), done: make(chan struct{})}
	go s.pump(r)
	return s
}

// closedStream is a stream that has already ended (stderr of a terminal).
func closedStream() *outStream {
	s := &outStream{changed: make(chan struct{}), done: make(chan struct{}), eof: true}
	close(s.done)
	return s
}

// notify wakes every waiter; callers hold s.mu.
func (s *outStream) notify() {
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *outStream) pump(r io.ReadCloser) {
	defer close(s.done)
	defer r.Close()
	chunk := make([]byte, 32<<10)
	for {
		n, err := r.Read(chunk)
		if n > 0 {
			s.mu.Lock()
			for len(s.buf)+n > outBufferLimit && !s.closed {
				ch := s.changed
				s.mu.Unlock()
				<-ch
				s.mu.Lock()
			}
			if s.closed {
				s.mu.Unlock()
				return
			}
			s.buf = append(s.buf, chunk[:n]...)
			s.notify()
			s.mu.Unlock()
		}
		if err != nil {
			// EOF on a pipe, EIO on a pty master whose slave closed, or
			// ErrClosed after close: all end the stream.
			s.mu.Lock()
			s.eof = true
			s.notify()
			s.mu.Unlock()
			return
		}
	}
}

// read returns up to n buffered bytes, blocking until there are some; it
// returns io.EOF once the stream ended and the buffer is empty.
func (s *outStream) read(ctx context.Context, n int) ([]byte, error) {
	for {
		s.mu.Lock()
		if len(s.buf) > 0 {
			k := min(n, len(s.buf))
			out := make([]byte, k)
			copy(out, s.buf)
			if k == len(s.buf) {
				s.buf = nil
			} else {
				s.buf = s.buf[k:]
			}
			s.notify()
			s.mu.Unlock()
			return out, nil
		}
		if s.eof || s.closed {
			s.mu.Unlock()
			return nil, io.EOF
		}
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// drained reports whether the stream ended and everything was read.
func (s *outStream) drained() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return (s.eof || s.closed) && len(s.buf) == 0
}

// close discards buffered output and stops the pump once its source ends.
func (s *outStream) close() {
	s.mu.Lock()
	s.closed = true
	s.buf = nil
	s.notify()
	s.mu.Unlock()
}

// recvPty receives the pty master that runc init sends over the console
// socket and makes it non-blocking so that closing it interrupts readers.
func recvPty(sock *os.File) (*os.File, error) {
	raw, err := sock.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("console socket: %w", err)
	}
	oob := make([]byte, unix.CmsgSpace(4))
	name := make([]byte, 4096)
	var (
		n, oobn int
		rerr    error
	)
	err = raw.Read(func(fd uintptr) bool {
		n, oobn, _, _, rerr = unix.Recvmsg(int(fd), name, oob, unix.MSG_CMSG_CLOEXEC)
		return !errors.Is(rerr, syscall.EAGAIN)
	})
	if err == nil {
		err = rerr
	}
	if err != nil {
		return nil, fmt.Errorf("receive pty master: %w", err)
	}
	if n == 0 && oobn == 0 {
		return nil, fmt.Errorf("receive pty master: console socket closed without a file")
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return nil, fmt.Errorf("receive pty master: bad control message")
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, fmt.Errorf("receive pty master: want one descriptor")
	}
	if err := unix.SetNonblock(fds[0], true); err != nil {
		unix.Close(fds[0])
		return nil, fmt.Errorf("pty master non-blocking: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "pty-master"), nil
}
