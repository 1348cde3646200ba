package task

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cocoon-containers/cocoon/shim/config"
	"github.com/cocoon-containers/cocoon/shim/sandbox"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/mount"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/protobuf"
	"github.com/containerd/containerd/runtime/v2/shim"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// RuntimeName is the containerd runtime this shim serves.
const RuntimeName = "io.containerd.cocoon.v2"

// stateFile in a sandbox container's bundle names the sandbox's state
// directory, so that `delete` after a crashed shim finds what to clean.
const stateFile = "cocoon-state-dir"

// Main runs the shim binary: `start`, `delete`, or the long-running server.
func Main(launcher func(config.Config) (sandbox.Launcher, error)) {
	shim.Run(RuntimeName, func(ctx context.Context, id string, publisher shim.Publisher, shutdown func()) (shim.Shim, error) {
		level := slog.LevelInfo
		if os.Getenv("COCOON_SHIM_DEBUG") != "" {
			level = slog.LevelDebug
		}
		log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})).With("id", id)
		slog.SetDefault(log)
		svc := New(ctx, Options{Launcher: launcher, Publisher: publisher, Shutdown: shutdown, Logger: log})
		return &Shim{Service: svc, id: id}, nil
	}, func(c *shim.Config) {
		// Launchers wait for their own children; a reaper would steal their
		// exit statuses.
		c.NoReaper = true
		c.NoSubreaper = true
	})
}

// Shim is the task service plus the binary's start and delete actions.
type Shim struct {
	*Service
	id string
}

// groupID is the shim a container belongs to: its pod's sandbox id when the
// CRI annotations say so, else its own id.
func groupID(id string, annotations map[string]string) (string, error) {
	role, err := sandbox.RoleOf(id, annotations)
	if err != nil {
		return "", err
	}
	if sid := annotations[sandbox.AnnotationSandboxID]; role.IsSandbox && sid != "" {
		if err := sandbox.ValidID(sid); err != nil {
			return "", err
		}
		return sid, nil
	}
	return role.SandboxID, nil
}

// StartShim starts the long-running shim for the container's pod, or returns
// the address of the pod's shim that already runs. It runs in the bundle.
func (s *Shim) StartShim(ctx context.Context, opts shim.StartOpts) (_ string, retErr error) {
	if err := sandbox.ValidID(s.id); err != nil {
		return "", err
	}
	spec, err := readSpec(".")
	if err != nil {
		return "", fmt.Errorf("start shim %s: %w", s.id, err)
	}
	group, err := groupID(s.id, spec.Annotations)
	if err != nil {
		return "", fmt.Errorf("start shim %s: %w", s.id, err)
	}
	address, err := shim.SocketAddress(ctx, opts.Address, group)
	if err != nil {
		return "", err
	}
	socket, err := shim.NewSocket(address)
	if err != nil {
		if !shim.SocketEaddrinuse(err) {
			return "", fmt.Errorf("start shim %s: socket: %w", s.id, err)
		}
		if shim.CanConnect(address) {
			// The pod's shim is running: this container joins it.
			if err := shim.WriteAddress("address", address); err != nil {
				return "", err
			}
			return address, nil
		}
		if err := shim.RemoveSocket(address); err != nil {
			return "", fmt.Errorf("start shim %s: remove stale socket: %w", s.id, err)
		}
		if socket, err = shim.NewSocket(address); err != nil {
			return "", fmt.Errorf("start shim %s: socket: %w", s.id, err)
		}
	}
	defer func() {
		if retErr != nil {
			socket.Close()
			_ = shim.RemoveSocket(address)
		}
	}()
	if err := shim.WriteAddress("address", address); err != nil {
		return "", err
	}
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return "", err
	}
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	cwd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	args := []string{"-namespace", ns, "-id", s.id, "-address", opts.Address}
	if opts.Debug {
		args = append(args, "-debug")
	}
	f, err := socket.File()
	if err != nil {
		return "", err
	}
	defer f.Close()
	cmd := exec.Command(self, args...)
	cmd.Dir = cwd
	cmd.Env = append(os.Environ(), "GOMAXPROCS=2")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.ExtraFiles = []*os.File{f}
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("start shim %s: %w", s.id, err)
	}
	defer func() {
		if retErr != nil {
			_ = cmd.Process.Kill()
		}
	}()
	go cmd.Wait()
	if err := shim.AdjustOOMScore(cmd.Process.Pid); err != nil {
		return "", fmt.Errorf("start shim %s: oom score: %w", s.id, err)
	}
	return address, nil
}

// Cleanup is `delete` after the shim died: it kills what is left of the
// sandbox, unmounts and removes its files. It runs in the bundle.
func (s *Shim) Cleanup(ctx context.Context) (*taskAPI.DeleteResponse, error) {
	cwd, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	var errs []error
	if err := mount.UnmountAll(filepath.Join(cwd, "rootfs"), 0); err != nil {
		errs = append(errs, fmt.Errorf("unmount rootfs: %w", err))
	}
	if b, err := os.ReadFile(filepath.Join(cwd, stateFile)); err == nil {
		if err := cleanupStateDir(strings.TrimSpace(string(b))); err != nil {
			errs = append(errs, err)
		}
	}
	if address, err := shim.ReadAddress(filepath.Join(cwd, "address")); err == nil && !shim.CanConnect(address) {
		_ = shim.RemoveSocket(address)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("clean up %s: %w", s.id, err)
	}
	return &taskAPI.DeleteResponse{
		ExitedAt:   protobuf.ToTimestamp(time.Now()),
		ExitStatus: 128 + uint32(unix.SIGKILL),
	}, nil
}

// writeStateFile records the sandbox's state directory in the bundle.
func writeStateFile(bundle, stateDir string) error {
	return os.WriteFile(filepath.Join(bundle, stateFile), []byte(stateDir+"\n"), 0o600)
}

// cleanupStateDir kills every process that still refers to the sandbox's
// state directory (the VM, virtiofsd, the process launcher's agent: all are
// started with sockets or files in it), unmounts what is mounted below it and
// removes it.
func cleanupStateDir(dir string) error {
	if dir == "" || !filepath.IsAbs(dir) || filepath.Clean(dir) != dir || dir == "/" {
		return fmt.Errorf("state dir %q: %w", dir, errdefs.ErrInvalidArgument)
	}
	killReferrers(dir)
	var errs []error
	// Mounts can be stacked (a recursive bind of the shared directory onto
	// itself covers the binds below it): unmount until none is left.
	for pass := 0; pass < 8; pass++ {
		mounts := mountsUnder(dir)
		if len(mounts) == 0 {
			break
		}
		errs = errs[:0]
		for _, m := range mounts {
			if err := unix.Unmount(m, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
				errs = append(errs, fmt.Errorf("unmount %s: %w", m, err))
			}
		}
	}
	if len(errs) == 0 {
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// killReferrers SIGKILLs processes whose command line or environment names
// a path inside dir.
func killReferrers(dir string) {
	needle := []byte(dir + "/")
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	self := os.Getpid()
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self || pid == 1 {
			continue
		}
		hit := false
		for _, f := range []string{"cmdline", "environ"} {
			b, err := readLimited(filepath.Join("/proc", e.Name(), f), 1<<20)
			if err == nil && bytes.Contains(b, needle) {
				hit = true
				break
			}
		}
		if hit {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
	}
}

func readLimited(path string, n int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, n))
}

// mountsUnder lists mount points at or below dir, deepest first.
func mountsUnder(dir string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMountinfo(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// unescapeMountinfo undoes the octal escapes of /proc/self/mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
