// Package kmod resolves kernel modules and their dependencies into a load
// order, from the kernel's modules.dep when the package ships one, or from
// each module's .modinfo "depends" field otherwise (Debian's linux-image
// packages leave modules.dep to depmod at install time).
package kmod

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// ErrNotFound names a module the kernel does not have.
var ErrNotFound = errors.New("kernel module not found")

// Index maps module names to files and dependencies.
type Index struct {
	// Path of each module relative to the modules directory.
	Path map[string]string
	// Deps lists each module's direct (or, from modules.dep, transitive)
	// dependencies; without modules.dep Resolve fills it as it goes.
	Deps map[string][]string
	// Builtin names modules compiled into the kernel.
	Builtin map[string]bool
	// SoftPre lists each module's "softdep pre:" names from .modinfo:
	// modules it asks for at run time (libcrc32c asks the crypto API for
	// crc32c). They are loaded first when the kernel has them.
	SoftPre map[string][]string

	// dir is set when Deps are read from .modinfo, one module at a time,
	// the first time Resolve needs them.
	dir    string
	loaded map[string]bool
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
		// Names come from file names (the kernel build names a module
		// after its file); dependencies from .modinfo when needed.
		idx = &Index{Path: map[string]string{}, Deps: map[string][]string{}, Builtin: map[string]bool{},
			SoftPre: map[string][]string{}, dir: dir, loaded: map[string]bool{}}
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() || !IsModule(p) {
				return nil
			}
			rel, _ := filepath.Rel(dir, p)
			name := Name(p)
			if old, dup := idx.Path[name]; dup {
				return fmt.Errorf("module %s found twice: %s and %s", name, old, rel)
			}
			idx.Path[name] = rel
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

// Module file suffixes: plain and compressed (CONFIG_MODULE_COMPRESS_*).
var moduleSuffixes = []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"}

// IsModule reports whether a file name is a kernel module, compressed or not.
func IsModule(p string) bool {
	for _, s := range moduleSuffixes {
		if strings.HasSuffix(p, s) {
			return true
		}
	}
	return false
}

// PlainName turns a module file name into the uncompressed one (x.ko.xz → x.ko).
func PlainName(p string) string {
	for _, s := range moduleSuffixes[1:] {
		if strings.HasSuffix(p, s) {
			return strings.TrimSuffix(p, s) + ".ko"
		}
	}
	return p
}

// ReadModule returns a module's ELF image, decompressing .ko.xz, .ko.zst and
// .ko.gz files, so that the guest can finit_module it without
// MODULE_INIT_COMPRESSED_FILE support.
func ReadModule(p string) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var r io.Reader = f
	switch {
	case strings.HasSuffix(p, ".ko.xz"):
		xr, err := xz.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("module %s: %w", p, err)
		}
		r = xr
	case strings.HasSuffix(p, ".ko.zst"):
		zr, err := zstd.NewReader(f, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, fmt.Errorf("module %s: %w", p, err)
		}
		defer zr.Close()
		r = zr
	case strings.HasSuffix(p, ".ko.gz"):
		gr, err := gzip.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("module %s: %w", p, err)
		}
		r = gr
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", p, err)
	}
	if len(b) < 4 || string(b[:4]) != "\x7fELF" {
		return nil, fmt.Errorf("module %s is not an ELF object", p)
	}
	return b, nil
}

// ReadModinfo returns the key=value pairs of a module's .modinfo section.
func ReadModinfo(path string) (map[string]string, error) {
	var f *elf.File
	if strings.HasSuffix(path, ".ko") {
		// Plain modules: read the section only, not the whole file.
		ef, err := elf.Open(path)
		if err != nil {
			return nil, err
		}
		defer ef.Close()
		f = ef
	} else {
		b, err := ReadModule(path)
		if err != nil {
			return nil, err
		}
		if f, err = elf.NewFile(bytes.NewReader(b)); err != nil {
			return nil, err
		}
	}
	s := f.Section(".modinfo")
	if s == nil {
		return nil, errors.New("no .modinfo section")
	}
	info, err := s.Data()
	if err != nil {
		return nil, err
	}
	return parseModinfo(info), nil
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

// readDeps fills Deps[name] from the module's .modinfo, once, when the
// index was built without modules.dep.
func (idx *Index) readDeps(name, rel string) error {
	if idx.dir == "" || idx.loaded[name] {
		return nil
	}
	idx.loaded[name] = true
	info, err := ReadModinfo(filepath.Join(idx.dir, rel))
	if err != nil {
		return fmt.Errorf("module %s: %w", rel, err)
	}
	if n := info["name"]; n != "" && Name(n) != name {
		return fmt.Errorf("module file %s calls itself %s", rel, n)
	}
	for _, dep := range strings.Split(info["depends"], ",") {
		if dep = strings.TrimSpace(dep); dep != "" {
			idx.Deps[name] = append(idx.Deps[name], Name(dep))
		}
	}
	idx.SoftPre[name] = parseSoftPre(info["softdep"])
	return nil
}

// parseSoftPre returns the names after "pre:" in a softdep value such as
// "pre: crc32c post: foo".
func parseSoftPre(v string) []string {
	var out []string
	pre := false
	for _, f := range strings.Fields(v) {
		switch f {
		case "pre:":
			pre = true
		case "post:":
			pre = false
		default:
			if pre {
				out = append(out, Name(f))
			}
		}
	}
	return out
}

// softModule maps a soft dependency, often an algorithm name, to a module
// the kernel has: the name itself, or its generic implementation.
func (idx *Index) softModule(n string) (string, bool) {
	for _, c := range []string{n, n + "_generic"} {
		if idx.Builtin[c] {
			return "", false
		}
		if _, ok := idx.Path[c]; ok {
			return c, true
		}
	}
	return "", false
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
		if err := idx.readDeps(n, p); err != nil {
			return err
		}
		deps := append([]string(nil), idx.Deps[n]...)
		sort.Strings(deps)
		for _, d := range deps {
			if err := visit(d, append(chain, n)); err != nil {
				return err
			}
		}
		for _, soft := range idx.SoftPre[n] {
			if m, ok := idx.softModule(soft); ok && state[m] != 1 {
				if err := visit(m, append(chain, n)); err != nil {
					return err
				}
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
