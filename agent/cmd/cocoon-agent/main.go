// Command cocoon-agent is the guest agent: PID 1 of the confidential VM (or
// an ordinary process on a host, for tests and the process launcher). It
// serves the Kata-compatible agent API over ttrpc and runs containers with
// libcontainer, re-executing itself as "init" for every container process.
//
//	cocoon-agent                  serve (address from agent.server_addr=,
//	                              cocoon.server_addr= or COCOON_AGENT_SERVER_ADDR)
//	cocoon-agent policy eval ...  evaluate a policy offline
//
// COCOON_AGENT_CONFIG names the TOML configuration (default
// /etc/cocoon/agent.toml).
package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/containerd/ttrpc"

	"github.com/cocoon-containers/cocoon/agent/config"
	"github.com/cocoon-containers/cocoon/agent/copyfile"
	"github.com/cocoon-containers/cocoon/agent/devmapper"
	"github.com/cocoon-containers/cocoon/agent/initsys"
	"github.com/cocoon-containers/cocoon/agent/network"
	// Container processes ("cocoon-agent init") are set up from its
	// initializer, before the rest of the agent initializes.
	_ "github.com/cocoon-containers/cocoon/agent/container/reexec"
	"github.com/cocoon-containers/cocoon/agent/policy"
	"github.com/cocoon-containers/cocoon/agent/server"
	"github.com/cocoon-containers/cocoon/agent/storage"
	"github.com/cocoon-containers/cocoon/attestation"
	"github.com/cocoon-containers/cocoon/rpc/transport"
)

// version is set at build time with -ldflags '-X main.version=...'.
var version = "devel"

// subcommands are dispatched on os.Args[1]; without one the agent serves.
var subcommands = map[string]func(ctx context.Context, args []string) error{
	"policy": func(ctx context.Context, args []string) error {
		if len(args) == 0 || args[0] != "eval" {
			return errors.New("usage: cocoon-agent policy eval --policy FILE --request FILE [--kind CreateContainerRequest]")
		}
		return policy.EvalCommand(ctx, args[1:], os.Stdout, os.Stderr)
	},
}

func main() {
	ctx := context.Background()
	if len(os.Args) > 1 {
		cmd, ok := subcommands[os.Args[1]]
		if !ok {
			fmt.Fprintf(os.Stderr, "cocoon-agent: unknown command %q\n", os.Args[1])
			os.Exit(2)
		}
		if err := cmd(ctx, os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "cocoon-agent:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(ctx); err != nil {
		slog.Error("agent failed", "error", err)
		if os.Getpid() == 1 {
			// PID 1 must not exit: the kernel would panic.
			powerOff(ctx)
		}
		os.Exit(1)
	}
	if os.Getpid() == 1 {
		powerOff(ctx)
	}
}

// powerOff ends the VM; if the kernel refuses, PID 1 stays (exiting would
// panic the kernel and lose the console's last lines).
func powerOff(ctx context.Context) {
	if err := initsys.PowerOff(ctx, slog.Default()); err != nil {
		slog.Error("power off", "error", err)
	}
	select {}
}

func run(ctx context.Context) error {
	pid1 := os.Getpid() == 1
	if pid1 {
		// Mounts /proc first: configuration comes from /proc/cmdline. On
		// the initramfs this re-executes the agent on a tmpfs root.
		if err := initsys.Setup(ctx, initsys.Config{}); err != nil {
			return fmt.Errorf("init: %w", err)
		}
	}
	file := config.DefaultFile
	if f := os.Getenv("COCOON_AGENT_CONFIG"); f != "" {
		file = f
	}
	cfg, err := config.Load(file, config.DefaultCmdline)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	slog.SetDefault(log)

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	reaper, err := initsys.StartReaper(ctx, initsys.ReaperOptions{Subreaper: !pid1, Logger: log})
	if err != nil {
		return fmt.Errorf("reaper: %w", err)
	}
	defer reaper.Stop()

	provider, err := attestationProvider(cfg)
	if err != nil {
		return err
	}
	var binding policy.HostDataSource
	if provider != nil {
		binding = attestation.HostDataSource{Provider: provider}
	}
	enforcer, err := policy.NewEnforcer(ctx, policy.Options{DefaultPolicyPath: cfg.DefaultPolicy, Binding: binding, Logger: log})
	if err != nil {
		return err
	}
	var initdata *policy.Initdata
	if pid1 {
		if initdata, err = applyInitdataDevice(ctx, enforcer, log); err != nil {
			return err
		}
		if r := cfg.RootfsVerity; r != nil {
			v := devmapper.Verity{DataDevice: "/dev/vda", HashDevice: "/dev/vdb", DataBlocks: r.Blocks, RootHash: r.RootHash, Salt: r.Salt}
			if err := initsys.MountVerityRootfs(ctx, log, v, r.FSType); err != nil {
				return err
			}
		}
	}

	kbs, err := kbsConfig(cfg, initdata, provider, log)
	if err != nil {
		return err
	}
	images, err := imageService(cfg, initdata, kbs.KBS, log)
	if err != nil {
		return err
	}
	if !pid1 {
		// On a host, the layer cache goes with the agent.
		defer os.RemoveAll(imageWorkDir(cfg))
	}
	opts := server.Options{
		Interceptors: []ttrpc.UnaryServerInterceptor{enforcer.UnaryInterceptor()},
		Storage:      storage.NewManager(storage.Config{Logger: log, Images: images}),
		Files:        copyfile.New(copyfile.DefaultRoot),
		Policy:       enforcer,
		PID1:         pid1,
		Version:      version,
		Logger:       log,
		RunDir:       cfg.RunDir,
		CgroupParent: cfg.CgroupParent,
	}
	if pid1 {
		opts.PowerOff = func(ctx context.Context) { powerOff(ctx) }
		// Only in a VM: on a host the network RPCs would let whoever
		// reaches the socket rewrite the host's interfaces and routes.
		opts.Network = network.New()
	}
	srv, err := server.New(ctx, opts)
	if err != nil {
		return err
	}
	if pid1 {
		startDebugConsole(ctx, cfg, log)
	}
	startWorkloadEndpoint(ctx, cfg, kbs, log)
	if err := removeStaleSocket(cfg.ServerAddr); err != nil {
		return err
	}
	l, err := transport.Listen(ctx, cfg.ServerAddr)
	if err != nil {
		return err
	}
	attrs := []any{"address", cfg.ServerAddr, "version", version, "pid1", pid1, "attestation", cfg.Attestation}
	if pid1 {
		attrs = append(attrs, "uptime", initsys.Uptime())
	}
	log.Info("agent serving", attrs...)
	serveErr := srv.Serve(ctx, l)
	// On a host, leave nothing behind; in a guest the VM goes away anyway.
	cctx := context.WithoutCancel(ctx)
	if err := srv.Cleanup(cctx); err != nil {
		log.Warn("cleanup", "error", err)
	}
	if a, err := transport.Parse(cfg.ServerAddr); err == nil && a.Scheme == transport.Unix {
		os.Remove(a.Path)
	}
	return serveErr
}

// removeStaleSocket removes a unix socket left by a previous agent.
func removeStaleSocket(addr string) error {
	a, err := transport.Parse(addr)
	if err != nil || a.Scheme != transport.Unix {
		return err
	}
	st, err := os.Lstat(a.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listen %s: %w", addr, err)
	}
	if st.Mode()&fs.ModeSocket == 0 {
		return fmt.Errorf("listen %s: %s exists and is not a socket", addr, a.Path)
	}
	return os.Remove(a.Path)
}
