package main

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/cocoon-containers/cocoon/agent/config"
	"github.com/cocoon-containers/cocoon/agent/initsys"
)

// debugShells are tried in order: a shell in the initrd, then one in the
// verity rootfs image (run chrooted there).
var debugShells = []struct{ root, shell string }{
	{"/", "/bin/sh"},
	{initsys.VerityRootfsMount, "/bin/sh"},
}

// startDebugConsole runs a shell on the console for agent.debug_console,
// restarting it when it exits. A confidential guest refuses: a shell on a
// console the host reads would hand the host the guest.
func startDebugConsole(ctx context.Context, cfg config.Config, log *slog.Logger) {
	if !cfg.DebugConsole {
		return
	}
	if cfg.Attestation != config.AttestationNone {
		log.WarnContext(ctx, "agent.debug_console refused: the guest is confidential", "attestation", cfg.Attestation)
		return
	}
	for _, s := range debugShells {
		if _, err := os.Stat(s.root + s.shell); err != nil {
			continue
		}
		log.WarnContext(ctx, "debug console: a root shell runs on the console", "root", s.root)
		go func() {
			for ctx.Err() == nil {
				con, err := os.OpenFile("/dev/console", os.O_RDWR, 0)
				if err != nil {
					log.ErrorContext(ctx, "debug console", "error", err)
					return
				}
				cmd := exec.CommandContext(ctx, s.shell)
				cmd.Stdin, cmd.Stdout, cmd.Stderr = con, con, con
				cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/", "TERM=linux"}
				cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0, Chroot: s.root}
				if err := cmd.Run(); err != nil && ctx.Err() == nil {
					log.WarnContext(ctx, "debug console shell ended", "error", err)
				}
				con.Close()
				time.Sleep(time.Second)
			}
		}()
		return
	}
	log.WarnContext(ctx, "agent.debug_console: no shell in the image (/bin/sh, or in the verity rootfs)")
}
