package initsys

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// Module is one line of the load list.
type Module struct {
	Path   string
	Params string
}

// maxModulesLoad bounds the load list.
const maxModulesLoad = 1 << 20

// ParseModulesLoad reads a load list as cocoon-rootfs writes it: one
// absolute module path per line in load order, optional parameters after
// the first space, blank lines and # comments ignored.
func ParseModulesLoad(r io.Reader) ([]Module, error) {
	var mods []Module
	s := bufio.NewScanner(io.LimitReader(r, maxModulesLoad))
	n := 0
	for s.Scan() {
		n++
		line := strings.TrimSpace(s.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		p, params, _ := strings.Cut(line, " ")
		if !strings.HasPrefix(p, "/") || !strings.HasSuffix(p, ".ko") {
			return nil, fmt.Errorf("modules.load line %d: %q is not an absolute path to a .ko file", n, p)
		}
		mods = append(mods, Module{Path: p, Params: strings.TrimSpace(params)})
	}
	return mods, s.Err()
}

// moduleLoader loads one module file (finit_module in a VM).
type moduleLoader interface {
	Load(path, params string) error
}

type kernelLoader struct{}

func (kernelLoader) Load(path, params string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.FinitModule(fd, params, 0)
}

// LoadModules loads the modules of the list at path in order. A missing
// list means nothing to load. A module that is already there (EEXIST) or
// finds no device to drive (ENODEV, ENXIO) counts as loaded; any other
// failure is reported and the rest are still tried, so that one bad
// module does not cost the guest its console or its agent channel.
func LoadModules(path string, l moduleLoader) (loaded int, errs []error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, []error{err}
	}
	defer f.Close()
	mods, err := ParseModulesLoad(f)
	if err != nil {
		return 0, []error{err}
	}
	for _, m := range mods {
		err := l.Load(m.Path, m.Params)
		switch {
		case err == nil, errors.Is(err, unix.EEXIST), errors.Is(err, unix.ENODEV), errors.Is(err, unix.ENXIO):
			loaded++
		default:
			errs = append(errs, fmt.Errorf("load %s: %w", m.Path, err))
		}
	}
	return loaded, errs
}
