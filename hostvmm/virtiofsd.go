package hostvmm

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/errdefs"
)

// Virtiofsd serves shared directories over vhost-user for virtio-fs. It
// speaks to either the Rust virtiofsd (Debian package virtiofsd) or the C
// one QEMU 7 ships as /usr/lib/qemu/virtiofsd.
type Virtiofsd struct {
	path string
	rust bool
}

// FindVirtiofsd locates bin, or when empty virtiofsd on PATH and then
// /usr/lib/qemu/virtiofsd, and tells which implementation it is.
func FindVirtiofsd(bin string) (*Virtiofsd, error) {
	if bin == "" {
		bin = "virtiofsd"
		if _, err := exec.LookPath(bin); err != nil {
			bin = "/usr/lib/qemu/virtiofsd"
		}
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		return nil, fmt.Errorf("find virtiofsd: %w", errdefs.ErrNotFound.WithMessage(err.Error()))
	}
	out, _ := exec.Command(path, "--help").CombinedOutput()
	return &Virtiofsd{path: path, rust: bytes.Contains(out, []byte("--shared-dir"))}, nil
}

// Args is the command line serving d on socket.
func (v *Virtiofsd) Args(socket string, d SharedDir) ([]string, error) {
	if v.rust {
		args := []string{"--socket-path=" + socket, "--shared-dir=" + d.HostPath, "--cache=never", "--sandbox=namespace"}
		if d.ReadOnly {
			args = append(args, "--readonly")
		}
		return args, nil
	}
	if d.ReadOnly {
		return nil, fmt.Errorf("shared dir %s: %s cannot share read-only; install the virtiofsd package: %w", d.Tag, v.path, errdefs.ErrNotImplemented)
	}
	// Its -o options are comma-separated.
	if strings.Contains(d.HostPath, ",") {
		return nil, fmt.Errorf("shared dir %s: %s cannot share a path with a comma (%s); install the virtiofsd package: %w", d.Tag, v.path, d.HostPath, errdefs.ErrNotImplemented)
	}
	return []string{"--socket-path=" + socket, "-o", "source=" + d.HostPath, "-o", "cache=none", "-o", "sandbox=namespace"}, nil
}

// Start serves d on VirtiofsdSocket(stateDir, d.Tag), logging to
// virtiofsd-<tag>.log in stateDir, and waits for the socket. made receives
// the paths it creates, also on failure.
func (v *Virtiofsd) Start(stateDir string, d SharedDir, made *[]string) (*Process, error) {
	sock := VirtiofsdSocket(stateDir, d.Tag)
	args, err := v.Args(sock, d)
	if err != nil {
		return nil, err
	}
	logPath := filepath.Join(stateDir, "virtiofsd-"+d.Tag+".log")
	*made = append(*made, sock, logPath)
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("virtiofsd for %s: %w", d.Tag, err)
	}
	cmd := exec.Command(v.path, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	p, err := StartProcess(cmd)
	logf.Close()
	if err != nil {
		return nil, fmt.Errorf("virtiofsd for %s: %w", d.Tag, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			return p, nil
		}
		if p.Exited() {
			b, _ := os.ReadFile(logPath)
			return p, fmt.Errorf("virtiofsd for %s %s: %s", d.Tag, p.Exit().Reason, bytes.TrimSpace(b))
		}
		if time.Now().After(deadline) {
			return p, fmt.Errorf("virtiofsd for %s made no socket in 10s", d.Tag)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
