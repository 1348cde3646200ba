package hostvmm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// Process supervises one child process of a launcher (a VMM, virtiofsd, the
// agent): it reaps the child exactly once and lets any number of callers
// wait for it.
type Process struct {
	cmd   *exec.Cmd
	done  chan struct{}
	state *os.ProcessState
	err   error
}

// StartProcess starts cmd in its own process group.
func StartProcess(cmd *exec.Cmd) (*Process, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	p := &Process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		p.state = cmd.ProcessState
		close(p.done)
	}()
	return p, nil
}

// Pid is the child's process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed once the child has been reaped.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the child has been reaped.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Exit is the child's exit; call it after Done is closed.
func (p *Process) Exit() ExitInfo { return ExitFromState(p.state) }

// Wait waits for the child or ctx.
func (p *Process) Wait(ctx context.Context) (ExitInfo, error) {
	select {
	case <-p.done:
		return p.Exit(), nil
	case <-ctx.Done():
		return ExitInfo{}, fmt.Errorf("wait for pid %d: %w", p.Pid(), ctx.Err())
	}
}

// Signal sends sig to the child unless it has been reaped already.
func (p *Process) Signal(sig syscall.Signal) error {
	if p.Exited() {
		return nil
	}
	if err := p.cmd.Process.Signal(sig); err != nil && err != os.ErrProcessDone {
		return fmt.Errorf("signal pid %d: %w", p.Pid(), err)
	}
	return nil
}

// Kill sends SIGKILL and waits up to timeout for the child to be reaped.
func (p *Process) Kill(timeout time.Duration) error {
	if err := p.Signal(syscall.SIGKILL); err != nil {
		return err
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
		return fmt.Errorf("pid %d still running %s after SIGKILL", p.Pid(), timeout)
	}
}

// Terminate sends sig, waits up to grace, then kills.
func (p *Process) Terminate(sig syscall.Signal, grace time.Duration) error {
	if err := p.Signal(sig); err != nil {
		return err
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
		return p.Kill(5 * time.Second)
	}
}
