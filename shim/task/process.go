package task

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/cocoon-containers/cocoon/rpc/agentpb"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/fifo"
)

// readChunk is the length asked of the agent per ReadStdout/ReadStderr.
const readChunk = 32 << 10

// drainTimeout bounds the wait for a process's output after it exited: a
// daemonized child may hold the stream open for ever.
const drainTimeout = 10 * time.Second

// stdio names containerd's fifos for one process.
type stdio struct {
	stdin, stdout, stderr string
	terminal              bool
}

// process is a container's init process or one exec.
type process struct {
	cid    string // container id
	execID string // containerd's exec id; "" for init
	stdio  stdio
	spec   *agentpb.Process // exec only

	mu         sync.Mutex
	started    bool
	paused     bool
	exitStatus uint32
	exitedAt   time.Time
	exited     chan struct{} // closed once the exit is recorded
	stdinFifo  io.ReadCloser
	stdinDone  chan struct{}
	ioDone     sync.WaitGroup
}

func newProcess(cid, execID string, io stdio) *process {
	return &process{cid: cid, execID: execID, stdio: io, exited: make(chan struct{})}
}

// agentExecID is the process's id in the agent API: the init process has
// exec_id == container_id, as the Kata runtime sends it.
func (p *process) agentExecID() string {
	if p.execID == "" {
		return p.cid
	}
	return p.execID
}

func (p *process) isExited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

func (p *process) status() tasktypes.Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.isExited():
		return tasktypes.Status_STOPPED
	case p.paused:
		return tasktypes.Status_PAUSED
	case p.started:
		return tasktypes.Status_RUNNING
	}
	return tasktypes.Status_CREATED
}

// setExited records the exit once; later calls change nothing.
func (p *process) setExited(code uint32) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.isExited() {
		return false
	}
	p.exitStatus = code
	p.exitedAt = time.Now()
	close(p.exited)
	return true
}

// startIO connects containerd's fifos to the agent's streams: output is
// pulled with ReadStdout/ReadStderr until the agent returns no data, input is
// pushed with WriteStdin and ends with CloseStdin.
func (p *process) startIO(ctx context.Context, agent agentpb.AgentServiceService, log *slog.Logger) error {
	eid := p.agentExecID()
	type out struct {
		path string
		read func(context.Context, *agentpb.ReadStreamRequest) (*agentpb.ReadStreamResponse, error)
	}
	outs := []out{{p.stdio.stdout, agent.ReadStdout}}
	if !p.stdio.terminal {
		outs = append(outs, out{p.stdio.stderr, agent.ReadStderr})
	}
	for _, o := range outs {
		if o.path == "" {
			continue
		}
		w, err := fifo.OpenFifo(ctx, o.path, syscall.O_WRONLY, 0)
		if err != nil {
			return fmt.Errorf("open %s: %w", o.path, err)
		}
		p.ioDone.Add(1)
		go func(w io.WriteCloser, read func(context.Context, *agentpb.ReadStreamRequest) (*agentpb.ReadStreamResponse, error)) {
			defer p.ioDone.Done()
			defer w.Close()
			for {
				resp, err := read(ctx, &agentpb.ReadStreamRequest{ContainerId: p.cid, ExecId: eid, Len: readChunk})
				if err != nil || len(resp.Data) == 0 {
					if err != nil && ctx.Err() == nil {
						log.Debug("output stream ended", "exec_id", eid, "error", err)
					}
					return
				}
				if _, err := w.Write(resp.Data); err != nil {
					log.Debug("write output fifo", "exec_id", eid, "error", err)
					// Keep draining so the agent's buffer does not fill.
				}
			}
		}(w, o.read)
	}
	if p.stdio.stdin != "" {
		r, err := fifo.OpenFifo(ctx, p.stdio.stdin, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			return fmt.Errorf("open %s: %w", p.stdio.stdin, err)
		}
		p.mu.Lock()
		p.stdinFifo = r
		p.stdinDone = make(chan struct{})
		p.mu.Unlock()
		go func() {
			defer close(p.stdinDone)
			buf := make([]byte, readChunk)
			for {
				n, err := r.Read(buf)
				if n > 0 {
					data := buf[:n]
					for len(data) > 0 {
						resp, werr := agent.WriteStdin(ctx, &agentpb.WriteStreamRequest{ContainerId: p.cid, ExecId: eid, Data: data})
						if werr != nil {
							log.Debug("write stdin", "exec_id", eid, "error", werr)
							return
						}
						if resp.Len == 0 || int(resp.Len) > len(data) {
							return
						}
						data = data[resp.Len:]
					}
				}
				if err != nil {
					if !errors.Is(err, io.EOF) && !errors.Is(err, fifo.ErrReadClosed) && !errors.Is(err, os.ErrClosed) {
						log.Debug("read stdin fifo", "exec_id", eid, "error", err)
					}
					if p.isExited() {
						return
					}
					if _, err := agent.CloseStdin(ctx, &agentpb.CloseStdinRequest{ContainerId: p.cid, ExecId: eid}); err != nil {
						log.Debug("close stdin", "exec_id", eid, "error", err)
					}
					return
				}
			}
		}()
	}
	return nil
}

// closeStdin ends the input. The client closed its end of the fifo
// before CloseIO, so the copier forwards what is still in the fifo, reads
// EOF and sends CloseStdin; closing the fifo here at once would drop that
// data. Only a copier that does not finish in stdinDrainTimeout has its
// fifo closed under it.
func (p *process) closeStdin() {
	p.mu.Lock()
	r, done := p.stdinFifo, p.stdinDone
	p.stdinFifo = nil
	p.mu.Unlock()
	if r == nil {
		return
	}
	go func() {
		select {
		case <-done:
		case <-time.After(stdinDrainTimeout):
		}
		r.Close()
	}()
}

// stdinDrainTimeout bounds how long CloseIO lets the stdin copier drain.
const stdinDrainTimeout = 5 * time.Second

// waitIO waits until the output is drained, at most drainTimeout.
func (p *process) waitIO() {
	done := make(chan struct{})
	go func() {
		p.ioDone.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(drainTimeout):
	}
}
