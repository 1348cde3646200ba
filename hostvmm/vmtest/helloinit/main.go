// Command helloinit is a tiny PID 1 for launcher tests and the boot
// benchmark: it loads the initrd's kernel modules the way the agent does,
// serves the agent Health service on the virtio-serial port
// agent.channel.0, and, when asked on the command line, exchanges a file
// with the host through a shared directory. It is not the agent.
//
// Kernel command-line keys:
//
//	hello.token=T          returned as the agent version ("hello-T")
//	hello.share=TAG        mount the shared directory TAG at /mnt
//	hello.share_type=T     9p (default) or virtiofs
//	agent.server_addr=URL  where to serve (default serial://agent.channel.0)
//
// A Health.Check whose service is "poweroff" powers the VM off after the
// reply.
//
// Under the process launcher (COCOON_AGENT_SERVER_ADDR set) it only serves
// Health on that address, with HELLO_TOKEN as the token; "poweroff" and
// SIGTERM make it exit with code 0.
package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"

	"github.com/cocoon-containers/cocoon/rpc/agentpb"
	"github.com/cocoon-containers/cocoon/rpc/transport"
)

func main() {
	if addr := os.Getenv("COCOON_AGENT_SERVER_ADDR"); addr != "" {
		// Process launcher: no VM to set up, exit instead of powering off,
		// and end cleanly on SIGTERM like the agent.
		go func() {
			c := make(chan os.Signal, 1)
			signal.Notify(c, unix.SIGTERM)
			<-c
			os.Exit(0)
		}()
		if err := serve(addr, os.Getenv("HELLO_TOKEN")); err != nil {
			logf("fatal: %v", err)
			os.Exit(1)
		}
		return
	}
	if err := run(); err != nil {
		logf("fatal: %v", err)
	}
	// PID 1 must not exit: power off instead.
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "helloinit: "+format+"\n", args...)
}

func run() error {
	for _, m := range []struct{ src, dst, fs string }{
		{"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}, {"devtmpfs", "/dev", "devtmpfs"},
	} {
		if err := unix.Mount(m.src, m.dst, m.fs, 0, ""); err != nil && err != unix.EBUSY {
			return fmt.Errorf("mount %s: %w", m.dst, err)
		}
	}
	if con, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
		os.Stderr = con
	}
	if err := loadModules("/etc/cocoon/modules.load"); err != nil {
		return err
	}
	args := cmdline()
	if tag := args["hello.share"]; tag != "" {
		if err := exchange(tag, args["hello.share_type"]); err != nil {
			return err
		}
	}
	addr := "serial://agent.channel.0"
	if a := args["agent.server_addr"]; a != "" {
		addr = a
	}
	return serve(addr, args["hello.token"])
}

func serve(addr, token string) error {
	l, err := transport.Listen(context.Background(), addr)
	if err != nil {
		return err
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		return err
	}
	agentpb.RegisterHealthService(srv, &health{version: "hello-" + token})
	logf("serving health on %s", addr)
	return srv.Serve(context.Background(), l)
}

func cmdline() map[string]string {
	out := map[string]string{}
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return out
	}
	for _, f := range strings.Fields(string(b)) {
		k, v, _ := strings.Cut(f, "=")
		out[k] = v
	}
	return out
}

// loadModules reads the load list: one absolute path per line, optional
// parameters after a space, # comments.
func loadModules(list string) error {
	f, err := os.Open(list)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		line := strings.TrimSpace(s.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		path, params, _ := strings.Cut(line, " ")
		if err := loadModule(path, params); err != nil {
			// Not the agent: carry on with what loaded.
			logf("%v", err)
		}
	}
	return s.Err()
}

func loadModule(path, params string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open module %s: %w", path, err)
	}
	defer unix.Close(fd)
	if err := unix.FinitModule(fd, params, 0); err != nil && err != unix.EEXIST {
		// A driver for hardware the VM lacks refuses to load; that is fine.
		if err == unix.ENODEV || err == unix.ENXIO {
			return nil
		}
		return fmt.Errorf("load module %s: %w", path, err)
	}
	return nil
}

// exchange mounts the shared directory and answers the host's file: it
// reads /mnt/from-host and writes its content, reversed, to /mnt/from-guest.
func exchange(tag, fsType string) error {
	if err := os.MkdirAll("/mnt", 0o755); err != nil {
		return err
	}
	var err error
	switch fsType {
	case "", "9p":
		err = unix.Mount(tag, "/mnt", "9p", 0, "trans=virtio,version=9p2000.L,msize=262144")
	case "virtiofs":
		err = unix.Mount(tag, "/mnt", "virtiofs", 0, "")
	default:
		err = fmt.Errorf("unknown share type %q", fsType)
	}
	if err != nil {
		return fmt.Errorf("mount share %s: %w", tag, err)
	}
	in, err := os.ReadFile("/mnt/from-host")
	if err != nil {
		return err
	}
	in = bytes.TrimSpace(in)
	out := make([]byte, len(in))
	for i, c := range in {
		out[len(in)-1-i] = c
	}
	return os.WriteFile("/mnt/from-guest", out, 0o644)
}

type health struct{ version string }

func (h *health) Check(_ context.Context, req *agentpb.CheckRequest) (*agentpb.HealthCheckResponse, error) {
	if req.GetService() == "poweroff" {
		go func() {
			time.Sleep(100 * time.Millisecond)
			if os.Getenv("COCOON_AGENT_SERVER_ADDR") != "" {
				os.Exit(0)
			}
			unix.Sync()
			unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
		}()
	}
	return &agentpb.HealthCheckResponse{Status: agentpb.HealthCheckResponse_SERVING}, nil
}

func (h *health) Version(context.Context, *agentpb.CheckRequest) (*agentpb.VersionCheckResponse, error) {
	return &agentpb.VersionCheckResponse{AgentVersion: h.version, GrpcVersion: "ttrpc"}, nil
}
