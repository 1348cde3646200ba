package shimtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Namespace is the containerd namespace the harness uses.
const Namespace = "cocoon-test"

// Containerd is a private containerd: its own root, state, sockets and
// configuration under one directory, with the shim binaries of BinDir first
// on its PATH.
type Containerd struct {
	Dir     string
	BinDir  string
	Address string
	// CRI enables the CRI plugin (for crictl tests).
	CRI bool
	// ExtraConfig is appended to the generated config.toml.
	ExtraConfig string

	cmd  *exec.Cmd
	done chan struct{}
	log  *os.File
}

// ConfigPath is the generated configuration file.
func (c *Containerd) ConfigPath() string { return filepath.Join(c.Dir, "config.toml") }

// LogPath is containerd's log.
func (c *Containerd) LogPath() string { return filepath.Join(c.Dir, "containerd.log") }

// StateDir is containerd's state directory (bundles live below it).
func (c *Containerd) StateDir() string { return filepath.Join(c.Dir, "state") }

func (c *Containerd) config() string {
	disabled := []string{
		`"io.containerd.snapshotter.v1.btrfs"`, `"io.containerd.snapshotter.v1.zfs"`,
		`"io.containerd.snapshotter.v1.devmapper"`, `"io.containerd.snapshotter.v1.aufs"`,
		`"io.containerd.tracing.processor.v1.otlp"`, `"io.containerd.internal.v1.opt"`,
	}
	if !c.CRI {
		disabled = append(disabled, `"io.containerd.grpc.v1.cri"`)
	}
	return fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = [%s]

[grpc]
  address = %q

[ttrpc]
  address = %q

[debug]
  level = "debug"
%s`, filepath.Join(c.Dir, "root"), c.StateDir(), strings.Join(disabled, ", "), c.Address, c.Address+".ttrpc", c.ExtraConfig)
}

// Start writes the configuration and starts containerd, returning once it
// answers on its socket.
func (c *Containerd) Start(ctx context.Context) error {
	if c.Address == "" {
		c.Address = filepath.Join(c.Dir, "containerd.sock")
	}
	if err := os.MkdirAll(c.Dir, 0o711); err != nil {
		return err
	}
	if err := os.WriteFile(c.ConfigPath(), []byte(c.config()), 0o600); err != nil {
		return err
	}
	log, err := os.OpenFile(c.LogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command("containerd", "--config", c.ConfigPath())
	cmd.Env = append(os.Environ(), "PATH="+c.BinDir+":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		return fmt.Errorf("start containerd: %w", err)
	}
	c.cmd, c.log, c.done = cmd, log, make(chan struct{})
	go func() {
		cmd.Wait()
		close(c.done)
	}()
	for {
		conn, err := net.Dial("unix", c.Address)
		if err == nil {
			conn.Close()
			// The socket answers before every plugin is loaded; a
			// version call goes through the full service stack.
			if _, _, err := c.Ctr(ctx, "version"); err == nil {
				return nil
			}
		}
		select {
		case <-c.done:
			return fmt.Errorf("containerd exited during start-up; log %s:\n%s", c.LogPath(), tail(c.LogPath()))
		case <-ctx.Done():
			c.Stop()
			return fmt.Errorf("containerd did not come up: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Stop ends containerd (not the shims, which outlive it like in production).
func (c *Containerd) Stop() error {
	if c.cmd == nil {
		return nil
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
	c.cmd = nil
	return c.log.Close()
}

// Restart stops and starts containerd with the same state.
func (c *Containerd) Restart(ctx context.Context) error {
	if err := c.Stop(); err != nil {
		return err
	}
	return c.Start(ctx)
}

// Ctr runs ctr against this containerd in the test namespace.
func (c *Containerd) Ctr(ctx context.Context, args ...string) (string, string, error) {
	return c.CtrInput(ctx, nil, args...)
}

// CtrInput runs ctr with stdin.
func (c *Containerd) CtrInput(ctx context.Context, stdin []byte, args ...string) (string, string, error) {
	full := append([]string{"--address", c.Address, "--namespace", Namespace}, args...)
	cmd := exec.CommandContext(ctx, "ctr", full...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errOut.String()))
	}
	return out.String(), errOut.String(), err
}

// CtrTTY runs ctr with a pseudo-terminal as its controlling terminal,
// stdin, stdout and stderr (ctr -t needs one), and returns what it wrote.
// The terminal is rows x cols; ctr resizes the task's terminal to match.
func (c *Containerd) CtrTTY(ctx context.Context, rows, cols uint16, args ...string) (string, error) {
	m, sl, err := openPTY()
	if err != nil {
		return "", err
	}
	defer m.Close()
	if err := setWinsize(m, rows, cols); err != nil {
		sl.Close()
		return "", fmt.Errorf("terminal size: %w", err)
	}
	full := append([]string{"--address", c.Address, "--namespace", Namespace}, args...)
	cmd := exec.CommandContext(ctx, "ctr", full...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = sl, sl, sl
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	err = cmd.Start()
	sl.Close()
	if err != nil {
		return "", err
	}
	var out bytes.Buffer
	copied := make(chan struct{})
	go func() {
		// Reading the master fails with EIO once ctr and its children
		// closed the terminal.
		io.Copy(&out, m)
		close(copied)
	}()
	err = cmd.Wait()
	<-copied
	if err != nil {
		err = fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), err
}

// Cleanup removes every task and container of the test namespace and then
// the harness directory's mounts.
func (c *Containerd) Cleanup(ctx context.Context) {
	if out, _, err := c.Ctr(ctx, "containers", "ls", "-q"); err == nil {
		for _, id := range strings.Fields(out) {
			c.Ctr(ctx, "tasks", "kill", "-s", "SIGKILL", "--all", id)
			c.Ctr(ctx, "tasks", "delete", "--force", id)
			c.Ctr(ctx, "containers", "delete", id)
		}
	}
	c.Stop()
	UnmountUnder(c.Dir)
}

// UnmountUnder detaches every mount at or below dir, deepest first.
func UnmountUnder(dir string) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var mps []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			mps = append(mps, f[4])
		}
	}
	for i := len(mps) - 1; i >= 0; i-- {
		_ = syscall.Unmount(mps[i], syscall.MNT_DETACH)
	}
}

// BuildShim builds the shim command pkg as BinDir/containerd-shim-cocoon-v2.
func BuildShim(ctx context.Context, binDir, pkg string) error {
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(binDir, "containerd-shim-cocoon-v2"), pkg)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go build %s: %w: %s", pkg, err, out)
	}
	return nil
}

func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// LogTail is the end of containerd's log, for failure messages.
func (c *Containerd) LogTail() string { return tail(c.LogPath()) }

var errNoBusybox = errors.New("busybox-static is not installed (apt-get install busybox-static)")
