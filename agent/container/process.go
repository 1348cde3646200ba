package container

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/containerd/console"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/configs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Process is one process of a container: the init process or an exec.
type Process struct {
	execID string
	lp     *libcontainer.Process
	pid    int

	stdinMu sync.Mutex
	stdin   *os.File // pipe write end, or the pty master for a terminal
	pty     *os.File

	stdout, stderr *outStream
	outFiles       []*os.File

	exited chan struct{}
	status int
	waited atomic.Bool

	closeOnce sync.Once
}

// spawn starts a process; an init process stops before exec until Start.
// Callers hold c.mu (or own c exclusively).
func (c *Container) spawn(execID string, sp *specs.Process, init bool) (_ *Process, retErr error) {
	if sp == nil || len(sp.Args) == 0 {
		return nil, fmt.Errorf("process has no arguments: %w", errdefs.ErrInvalidArgument)
	}
	lp := &libcontainer.Process{
		Args:             sp.Args,
		Env:              sp.Env,
		Cwd:              sp.Cwd,
		UID:              int(sp.User.UID),
		GID:              int(sp.User.GID),
		AdditionalGroups: make([]int, 0, len(sp.User.AdditionalGids)),
		Init:             init,
		LogLevel:         "3",
	}
	for _, g := range sp.User.AdditionalGids {
		lp.AdditionalGroups = append(lp.AdditionalGroups, int(g))
	}
	if !init {
		lp.Capabilities = configsCapabilities(sp.Capabilities)
		if sp.NoNewPrivileges {
			t := true
			lp.NoNewPrivileges = &t
		}
		lp.AppArmorProfile = sp.ApparmorProfile
		lp.Label = sp.SelinuxLabel
		for _, r := range sp.Rlimits {
			t, ok := rlimitTypes[r.Type]
			if !ok {
				return nil, fmt.Errorf("unknown rlimit %q: %w", r.Type, errdefs.ErrInvalidArgument)
			}
			lp.Rlimits = append(lp.Rlimits, configs.Rlimit{Type: t, Hard: r.Hard, Soft: r.Soft})
		}
	}
	p := &Process{execID: execID, lp: lp, exited: make(chan struct{})}

	// Files handed to the child; closed in the agent once it started.
	var childFiles []*os.File
	defer func() {
		for _, f := range childFiles {
			f.Close()
		}
		if retErr != nil {
			p.closeAll()
		}
	}()

	var consoleSock *os.File
	if sp.Terminal {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("console socket: %w", err)
		}
		if err := unix.SetNonblock(fds[0], true); err != nil {
			unix.Close(fds[0])
			unix.Close(fds[1])
			return nil, fmt.Errorf("console socket: %w", err)
		}
		consoleSock = os.NewFile(uintptr(fds[0]), "console-socket")
		defer consoleSock.Close()
		child := os.NewFile(uintptr(fds[1]), "console-socket-child")
		childFiles = append(childFiles, child)
		lp.ConsoleSocket = child
		if sp.ConsoleSize != nil {
			lp.ConsoleWidth = uint16(sp.ConsoleSize.Width)
			lp.ConsoleHeight = uint16(sp.ConsoleSize.Height)
		}
	} else {
		inR, inW, err := os.Pipe()
		if err != nil {
			return nil, fmt.Errorf("stdin pipe: %w", err)
		}
		childFiles = append(childFiles, inR)
		p.stdin = inW
		outR, outW, err := os.Pipe()
		if err != nil {
			return nil, fmt.Errorf("stdout pipe: %w", err)
		}
		childFiles = append(childFiles, outW)
		p.outFiles = append(p.outFiles, outR)
		errR, errW, err := os.Pipe()
		if err != nil {
			return nil, fmt.Errorf("stderr pipe: %w", err)
		}
		childFiles = append(childFiles, errW)
		p.outFiles = append(p.outFiles, errR)
		lp.Stdin, lp.Stdout, lp.Stderr = inR, outW, errW
	}

	var err error
	if init {
		err = c.lc.Start(lp)
	} else {
		err = c.lc.Run(lp)
	}
	if err != nil {
		return nil, fmt.Errorf("start process: %w", err)
	}
	// From here on the process exists and must be waited for.
	p.pid, _ = lp.Pid()
	for _, f := range childFiles {
		f.Close()
	}
	childFiles = nil
	go p.wait()

	if sp.Terminal {
		pty, err := recvPty(consoleSock)
		if err != nil {
			_ = lp.Signal(unix.SIGKILL)
			<-p.exited
			return nil, err
		}
		p.pty = pty
		p.stdin = pty
		p.stdout = newOutStream(nopCloser{pty})
		p.stderr = closedStream()
	} else {
		p.stdout = newOutStream(p.outFiles[0])
		p.stderr = newOutStream(p.outFiles[1])
	}
	return p, nil
}

type nopCloser struct{ io.Reader }

func (nopCloser) Close() error { return nil }

func (p *Process) wait() {
	ps, err := p.lp.Wait()
	status := 255
	if ps != nil {
		if ws, ok := ps.Sys().(syscall.WaitStatus); ok {
			switch {
			case ws.Signaled():
				status = 128 + int(ws.Signal())
			case ws.Exited():
				status = ws.ExitStatus()
			}
		}
	} else if err != nil {
		status = 255
	}
	p.status = status
	close(p.exited)
}

// MarkWaited records that the host collected the exit status, so that the
// process can be released once its output was read.
func (p *Process) MarkWaited() { p.waited.Store(true) }

// ExecID returns the process's exec id.
func (p *Process) ExecID() string { return p.execID }

// Pid returns the process id in the agent's pid namespace.
func (p *Process) Pid() int { return p.pid }

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// Wait blocks until the process exits and returns its status (128+signal
// when killed by a signal).
func (p *Process) Wait(ctx context.Context) (int, error) {
	select {
	case <-p.exited:
		return p.status, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

func (p *Process) signal(sig syscall.Signal) error {
	if p.Exited() {
		return fmt.Errorf("signal process %s: exited: %w", p.execID, errdefs.ErrFailedPrecondition)
	}
	if err := p.lp.Signal(sig); err != nil {
		if errors.Is(err, os.ErrProcessDone) {
			return fmt.Errorf("signal process %s: exited: %w", p.execID, errdefs.ErrFailedPrecondition)
		}
		return fmt.Errorf("signal process %s: %w", p.execID, err)
	}
	return nil
}

// ReadStdout returns up to n bytes of output, blocking until there is some;
// io.EOF when the output ended and was read completely.
func (p *Process) ReadStdout(ctx context.Context, n int) ([]byte, error) {
	return p.stdout.read(ctx, n)
}

// ReadStderr is ReadStdout for standard error; a terminal has none.
func (p *Process) ReadStderr(ctx context.Context, n int) ([]byte, error) {
	return p.stderr.read(ctx, n)
}

// WriteStdin writes all of data to the process's input.
func (p *Process) WriteStdin(ctx context.Context, data []byte) (int, error) {
	p.stdinMu.Lock()
	in := p.stdin
	p.stdinMu.Unlock()
	if in == nil {
		return 0, fmt.Errorf("write stdin of %s: stdin closed: %w", p.execID, errdefs.ErrFailedPrecondition)
	}
	n, err := in.Write(data)
	if err != nil {
		if errors.Is(err, os.ErrClosed) || errors.Is(err, unix.EPIPE) || errors.Is(err, unix.EIO) {
			return n, fmt.Errorf("write stdin of %s: %w: %w", p.execID, err, errdefs.ErrFailedPrecondition)
		}
		return n, fmt.Errorf("write stdin of %s: %w", p.execID, err)
	}
	return n, nil
}

// CloseStdin closes the process's input (sends EOF; for a terminal, the
// end-of-file character).
func (p *Process) CloseStdin(ctx context.Context) error {
	p.stdinMu.Lock()
	defer p.stdinMu.Unlock()
	if p.stdin == nil {
		return nil
	}
	if p.pty != nil {
		// The pty master carries output too: send VEOF instead of closing.
		_, err := p.pty.Write([]byte{4})
		p.stdin = nil
		if err != nil {
			return fmt.Errorf("close stdin of %s: %w", p.execID, err)
		}
		return nil
	}
	err := p.stdin.Close()
	p.stdin = nil
	if err != nil {
		return fmt.Errorf("close stdin of %s: %w", p.execID, err)
	}
	return nil
}

// Resize sets the terminal's window size.
func (p *Process) Resize(ctx context.Context, rows, cols uint16) error {
	if p.pty == nil {
		return fmt.Errorf("resize %s: process has no terminal: %w", p.execID, errdefs.ErrFailedPrecondition)
	}
	ws := &unix.Winsize{Row: rows, Col: cols}
	raw, err := p.pty.SyscallConn()
	if err != nil {
		return fmt.Errorf("resize %s: %w", p.execID, err)
	}
	var ioErr error
	if err := raw.Control(func(fd uintptr) {
		ioErr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, ws)
	}); err != nil {
		return fmt.Errorf("resize %s: %w", p.execID, errdefs.ErrFailedPrecondition)
	}
	if ioErr != nil {
		return fmt.Errorf("resize %s: %w", p.execID, ioErr)
	}
	return nil
}

// WinSize returns the terminal's window size.
func (p *Process) WinSize() (console.WinSize, error) {
	if p.pty == nil {
		return console.WinSize{}, fmt.Errorf("window size of %s: no terminal: %w", p.execID, errdefs.ErrFailedPrecondition)
	}
	var (
		ws    *unix.Winsize
		ioErr error
	)
	raw, err := p.pty.SyscallConn()
	if err != nil {
		return console.WinSize{}, err
	}
	if err := raw.Control(func(fd uintptr) { ws, ioErr = unix.IoctlGetWinsize(int(fd), unix.TIOCGWINSZ) }); err != nil {
		return console.WinSize{}, err
	}
	if ioErr != nil {
		return console.WinSize{}, ioErr
	}
	return console.WinSize{Height: ws.Row, Width: ws.Col}, nil
}

func (p *Process) drained() bool {
	return p.stdout == nil || (p.stdout.drained() && p.stderr.drained())
}

// closeAll releases every descriptor the agent holds for the process.
func (p *Process) closeAll() {
	p.closeOnce.Do(func() {
		if p.stdout != nil {
			p.stdout.close()
		}
		if p.stderr != nil {
			p.stderr.close()
		}
		p.stdinMu.Lock()
		if p.stdin != nil && p.stdin != p.pty {
			p.stdin.Close()
		}
		p.stdin = nil
		p.stdinMu.Unlock()
		if p.pty != nil {
			p.pty.Close()
		}
		for _, f := range p.outFiles {
			f.Close()
		}
		if p.stdout != nil {
			<-p.stdout.done
			<-p.stderr.done
		}
	})
}

var rlimitTypes = map[string]int{
	"RLIMIT_CPU":        unix.RLIMIT_CPU,
	"RLIMIT_FSIZE":      unix.RLIMIT_FSIZE,
	"RLIMIT_DATA":       unix.RLIMIT_DATA,
	"RLIMIT_STACK":      unix.RLIMIT_STACK,
	"RLIMIT_CORE":       unix.RLIMIT_CORE,
	"RLIMIT_RSS":        unix.RLIMIT_RSS,
	"RLIMIT_NPROC":      unix.RLIMIT_NPROC,
	"RLIMIT_NOFILE":     unix.RLIMIT_NOFILE,
	"RLIMIT_MEMLOCK":    unix.RLIMIT_MEMLOCK,
	"RLIMIT_AS":         unix.RLIMIT_AS,
	"RLIMIT_LOCKS":      unix.RLIMIT_LOCKS,
	"RLIMIT_SIGPENDING": unix.RLIMIT_SIGPENDING,
	"RLIMIT_MSGQUEUE":   unix.RLIMIT_MSGQUEUE,
	"RLIMIT_NICE":       unix.RLIMIT_NICE,
	"RLIMIT_RTPRIO":     unix.RLIMIT_RTPRIO,
	"RLIMIT_RTTIME":     unix.RLIMIT_RTTIME,
}
