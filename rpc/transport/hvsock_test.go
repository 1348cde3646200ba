package transport

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

// fakeVMM plays the VMM side of a hybrid vsock socket. For each connection it
// reads the CONNECT line and calls answer with the attempt number (from 1).
type fakeVMM struct {
	t        *testing.T
	path     string
	attempts atomic.Int32
	ports    chan string
}

func startFakeVMM(t *testing.T, answer func(attempt int, c net.Conn)) *fakeVMM {
	t.Helper()
	v := &fakeVMM{t: t, path: filepath.Join(t.TempDir(), "vsock.sock"), ports: make(chan string, 100)}
	l, err := net.Listen("unix", v.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				line, err := bufio.NewReader(io.LimitReader(c, int64(len("CONNECT 4294967295\n")))).ReadString('\n')
				if err != nil {
					c.Close()
					return
				}
				v.ports <- strings.TrimSpace(line)
				answer(int(v.attempts.Add(1)), c)
			}()
		}
	}()
	return v
}

func TestHybridVsockHandshake(t *testing.T) {
	v := startFakeVMM(t, func(_ int, c net.Conn) {
		// The reply and the first stream bytes arrive together: the dialer
		// must not swallow what follows the OK line.
		io.WriteString(c, "OK 1073741824\nhello")
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err == nil {
			c.Write(buf)
		}
		c.Close()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, "hvsock://"+v.path+":1024")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, want := <-v.ports, "CONNECT 1024"; got != want {
		t.Fatalf("VMM saw %q, want %q", got, want)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	if got, want := string(buf), "hello"; got != want {
		t.Fatalf("first stream bytes = %q, want %q", got, want)
	}
	c.Write([]byte("ping"))
	if _, err := io.ReadFull(c, buf[:4]); err != nil || string(buf[:4]) != "ping" {
		t.Fatalf("echo = %q, %v; want ping", buf[:4], err)
	}
}

func TestHybridVsockRetriesUntilListening(t *testing.T) {
	v := startFakeVMM(t, func(attempt int, c net.Conn) {
		if attempt < 3 {
			c.Close() // nobody listens on the guest port yet
			return
		}
		io.WriteString(c, "OK 5\n")
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := DialHybridVsock(ctx, v.path, 1024, HybridVsockOptions{RetryInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if got, want := v.attempts.Load(), int32(3); got != want {
		t.Fatalf("attempts = %d, want %d", got, want)
	}
}

func TestHybridVsockSlowReplyIsRetried(t *testing.T) {
	v := startFakeVMM(t, func(attempt int, c net.Conn) {
		if attempt == 1 {
			time.Sleep(300 * time.Millisecond) // longer than the handshake timeout
		}
		io.WriteString(c, "OK 5\n")
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := DialHybridVsock(ctx, v.path, 1024, HybridVsockOptions{HandshakeTimeout: 50 * time.Millisecond, RetryInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if got := v.attempts.Load(); got < 2 {
		t.Fatalf("attempts = %d, want at least 2", got)
	}
}

func TestHybridVsockFailures(t *testing.T) {
	tests := []struct {
		name   string
		answer func(int, net.Conn)
		noSock bool
		want   error
		errHas string
	}{
		{name: "garbage reply", answer: func(_ int, c net.Conn) { io.WriteString(c, "ERR no such port\n") }, errHas: "unexpected hybrid vsock reply"},
		{name: "endless reply", answer: func(_ int, c net.Conn) { io.WriteString(c, strings.Repeat("O", 4096)) }, errHas: "longer than"},
		{name: "never listening", answer: func(_ int, c net.Conn) { c.Close() }, want: errdefs.ErrUnavailable},
		{name: "no socket", noSock: true, want: errdefs.ErrUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "missing.sock")
			if !tt.noSock {
				path = startFakeVMM(t, tt.answer).path
			}
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			c, err := DialHybridVsock(ctx, path, 1024, HybridVsockOptions{RetryInterval: 10 * time.Millisecond})
			if err == nil {
				c.Close()
				t.Fatal("dial succeeded, want an error")
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("error = %v, want %v", err, tt.want)
			}
			if tt.errHas != "" && !strings.Contains(err.Error(), tt.errHas) {
				t.Fatalf("error = %v, want it to mention %q", err, tt.errHas)
			}
		})
	}
}
