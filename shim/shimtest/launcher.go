package shimtest

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/cocoon-containers/cocoon/shim/sandbox"
)

// Launcher starts a fake agent in-process for each sandbox, reached over a
// unix socket in the sandbox's state directory.
type Launcher struct {
	// Chroot makes the agents run processes inside the container rootfs.
	Chroot bool
	// Configure, when set, adjusts each new agent before it serves.
	Configure func(id string, a *Agent)

	mu     sync.Mutex
	agents map[string]*Agent
	specs  map[string]sandbox.LaunchSpec
}

// Agent returns the agent serving sandbox id.
func (l *Launcher) Agent(id string) *Agent {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.agents[id]
}

// Spec returns the launch spec sandbox id was started with.
func (l *Launcher) Spec(id string) sandbox.LaunchSpec {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.specs[id]
}

// Launch implements sandbox.Launcher.
func (l *Launcher) Launch(ctx context.Context, spec sandbox.LaunchSpec) (sandbox.VM, error) {
	sock := filepath.Join(spec.StateDir, "agent.sock")
	_ = os.Remove(sock)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return nil, err
	}
	a := NewAgent()
	a.Chroot = l.Chroot
	if spec.SharedDir != "" {
		shared := spec.SharedDir
		a.MapPath = func(p string) string {
			for _, prefix := range []string{"/run/cocoon-shared/" + sandbox.SharedFSTag + "/", sandbox.GuestSharedDir} {
				if rest, ok := strings.CutPrefix(p, prefix); ok {
					return filepath.Join(shared, rest)
				}
			}
			return p
		}
	}
	if l.Configure != nil {
		l.Configure(spec.ID, a)
	}
	l.mu.Lock()
	if l.agents == nil {
		l.agents = map[string]*Agent{}
		l.specs = map[string]sandbox.LaunchSpec{}
	}
	l.agents[spec.ID] = a
	l.specs[spec.ID] = spec
	l.mu.Unlock()
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	vm := &fakeVM{sock: sock, agent: a, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(vm.done)
		_ = a.Serve(sctx, ln)
	}()
	return vm, nil
}

type fakeVM struct {
	sock   string
	agent  *Agent
	cancel context.CancelFunc
	done   chan struct{}
}

func (v *fakeVM) DialAgent(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "unix", v.sock)
}

func (v *fakeVM) Wait(ctx context.Context) error {
	select {
	case <-v.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Stop kills every process of the fake guest and stops serving.
func (v *fakeVM) Stop(ctx context.Context) error {
	v.agent.mu.Lock()
	for _, c := range v.agent.containers {
		for _, p := range c.procs {
			p.kill(syscall.SIGKILL)
		}
	}
	v.agent.mu.Unlock()
	v.cancel()
	select {
	case <-v.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

func (v *fakeVM) Cleanup() error {
	if err := os.Remove(v.sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
