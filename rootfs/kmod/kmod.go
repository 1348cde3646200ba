// Package kmod resolves kernel modules and their dependencies into a load
// order, from the kernel's modules.dep when the package ships one, or from
// each module's .modinfo "depends" field otherwise (Debian's linux-image
// packages leave modules.dep to depmod at install time).
package kmod

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// ErrNotFound names a module the kernel does not have.
var ErrNotFound = errors.New("kernel module not found")

// Index maps module names to files and dependencies.
type Index struct {
	// Path of each module relative to the modules directory.
	Path map[string]string
	// Deps lists each module's direct (or, from modules.dep, transitive) dependencies.
	Deps map[string][]string
	// Builtin names modules compiled into the kernel.
	Builtin map[string]bool
}

// Name normalizes a module name: dashes become underscores, the extension goes.
func Name(s string) string {
	s = filepath.Base(s)
	for _, ext := range []string{".ko.xz", ".ko.zst", ".ko.gz", ".ko"} {
		s = strings.TrimSuffix(s, ext)
	}
	return strings.ReplaceAll(s, "-", "_")
}

// ParseModulesDep reads modules.dep ("path: dep dep ...").
func ParseModulesDep(r io.Reader) (*Index, error) {
	idx := &Index{Path: map[string]string{}, Deps: map[string][]string{}, Builtin: map[string]bool{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		mod, deps, ok := strings.Cut(text, ":")
		if !ok || strings.TrimSpace(mod) == "" {
			return nil, fmt.Errorf("modules.dep line %d: want \"path: deps\"", line)
		}
		mod = strings.TrimSpace(mod)
		if err := checkRel(mod); err != nil {
			return nil, fmt.Errorf("modules.dep line %d: %w", line, err)
		}
		name := Name(mod)
		idx.Path[name] = mod
		for _, d := range strings.Fields(deps) {
			if err := checkRel(d); err != nil {
				return nil, fmt.Errorf("modules.dep line %d: %w", line, err)
			}
			idx.Deps[name] = append(idx.Deps[name], Name(d))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read modules.dep: %w", err)
	}
	return idx, nil
}

func checkRel(p string) error {
	if filepath.IsAbs(p) || strings.Contains("/"+p+"/", "/../") {
		return fmt.Errorf("module path %q escapes the modules directory", p)
	}
	return nil
}

// Load indexes the modules directory dir (lib/modules/<version>): from
// modules.dep when present, else from every module's .modinfo.
func Load(dir string) (*Index, error) {
	var idx *Index
	if f, err := os.Open(filepath.Join(dir, "modules.dep")); err == nil {
		idx, err = ParseModulesDep(f)
		f.Close()
		if err != nil {
			return nil, err
		}
	} else {
		idx = &Index{Path: map[string]string{}, Deps: map[string][]string{}, Builtin: map[string]bool{}}
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() || !strings.HasSuffix(p, ".ko") {
				return nil
			}
			rel, _ := filepath.Rel(dir, p)
			info, err := ReadModinfo(p)
			if err != nil {
				return fmt.Errorf("module %s: %w", rel, err)
			}
			name := info["name"]
			if name == "" {
				name = Name(p)
			}
			idx.Path[Name(name)] = rel
			for _, dep := range strings.Split(info["depends"], ",") {
				if dep = strings.TrimSpace(dep); dep != "" {
					idx.Deps[Name(name)] = append(idx.Deps[Name(name)], Name(dep))
				}
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("index modules in %s: %w", dir, err)
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "modules.builtin")); err == nil {
		for _, l := range strings.Fields(string(b)) {
			idx.Builtin[Name(l)] = true
		}
	}
	return idx, nil
}

// ReadModinfo returns the key=value pairs of a module's .modinfo section.
func ReadModinfo(path string) (map[string]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	s := f.Section(".modinfo")
	if s == nil {
		return nil, errors.New("no .modinfo section")
	}
	b, err := s.Data()
	if err != nil {
		return nil, err
	}
	return parseModinfo(b), nil
}

func parseModinfo(b []byte) map[string]string {
	out := map[string]string{}
	for _, kv := range bytes.Split(b, []byte{0}) {
		k, v, ok := strings.Cut(string(kv), "=")
		if !ok {
			continue
		}
		if _, seen := out[k]; !seen {
			out[k] = v
		}
	}
	return out
}

// Resolve returns the files (relative to the modules directory) to load for
// the named modules, dependencies first. Built-in modules are skipped;
// optional names that the kernel lacks are skipped too.
func (idx *Index) Resolve(names []string, optional map[string]bool) ([]string, error) {
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(n string, chain []string) error
	visit = func(n string, chain []string) error {
		switch state[n] {
		case 2:
			return nil
		case 1:
			return fmt.Errorf("module dependency cycle: %s", strings.Join(append(chain, n), " -> "))
		}
		if idx.Builtin[n] {
			state[n] = 2
			return nil
		}
		p, ok := idx.Path[n]
		if !ok {
			if len(chain) > 0 {
				return fmt.Errorf("%w: %s (needed by %s)", ErrNotFound, n, chain[len(chain)-1])
			}
			return fmt.Errorf("%w: %s", ErrNotFound, n)
		}
		state[n] = 1
		deps := append([]string(nil), idx.Deps[n]...)
		sort.Strings(deps)
		for _, d := range deps {
			if err := visit(d, append(chain, n)); err != nil {
				return err
			}
		}
		state[n] = 2
		order = append(order, p)
		return nil
	}
	for _, raw := range names {
		n := Name(raw)
		if optional[n] && !idx.Builtin[n] {
			if _, ok := idx.Path[n]; !ok {
				continue
			}
		}
		if err := visit(n, nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}
