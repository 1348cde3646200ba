package hostvmm

import (
	"errors"
	"fmt"
	"os"
	"time"
)

// Leftovers is what a launcher started and created for one sandbox.
type Leftovers struct {
	Procs []*Process
	Files []string
	// StateDir is removed when the launcher created it.
	StateDir       string
	RemoveStateDir bool
}

// Cleanup kills the processes that still run, calls closeConn (the VMM's
// control connection, may be nil), then removes the files and the state
// directory. It reports every failure, for sandbox id.
func (l Leftovers) Cleanup(id string, closeConn func()) error {
	var errs []error
	for _, p := range l.Procs {
		if p != nil && !p.Exited() {
			if err := p.Kill(10 * time.Second); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if closeConn != nil {
		closeConn()
	}
	for _, f := range l.Files {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if l.RemoveStateDir {
		if err := os.Remove(l.StateDir); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove state dir: %w", err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("sandbox %s: cleanup: %w", id, err)
	}
	return nil
}
