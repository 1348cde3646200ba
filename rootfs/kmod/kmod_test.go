package kmod

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cocoon-containers/cocoon/rootfs/kernel/kerneltest"
	"github.com/cocoon-containers/cocoon/rootfs/kmod/kmodtest"
)

func loadFake(t *testing.T) *Index {
	t.Helper()
	f, err := os.Open("testdata/modules.dep")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	idx, err := ParseModulesDep(f)
	if err != nil {
		t.Fatal(err)
	}
	return idx
}

func names(paths []string) []string {
	var out []string
	for _, p := range paths {
		out = append(out, Name(p))
	}
	return out
}

func TestResolveOrder(t *testing.T) {
	idx := loadFake(t)
	idx.Builtin["overlay"] = true
	tests := []struct {
		mods []string
		want string
	}{
		{[]string{"virtio_console"}, "virtio_ring virtio virtio_console"},
		{[]string{"dm-verity"}, "dm_bufio dm_mod reed_solomon dm_verity"},
		{[]string{"virtio_pci", "virtio_console"}, "virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_console"},
		{[]string{"overlay", "virtio_console"}, "virtio_ring virtio virtio_console"},
	}
	for _, tt := range tests {
		got, err := idx.Resolve(tt.mods, nil)
		if err != nil {
			t.Fatalf("Resolve(%v): %v", tt.mods, err)
		}
		if g := strings.Join(names(got), " "); g != tt.want {
			t.Errorf("Resolve(%v) = %s, want %s", tt.mods, g, tt.want)
		}
	}
}

func TestResolveErrors(t *testing.T) {
	idx := loadFake(t)
	if _, err := idx.Resolve([]string{"sev-guest"}, nil); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "sev_guest") {
		t.Fatalf("missing module error = %v, want ErrNotFound naming sev_guest", err)
	}
	got, err := idx.Resolve([]string{"sev-guest", "virtio_console"}, map[string]bool{"sev_guest": true})
	if err != nil || len(got) != 3 {
		t.Fatalf("optional missing module: got %v, %v", got, err)
	}
	idx.Deps["virtio_ring"] = []string{"virtio_console"}
	if _, err := idx.Resolve([]string{"virtio_console"}, nil); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Fatalf("cycle error = %v", err)
	}
}

func TestParseModulesDepRejects(t *testing.T) {
	for _, in := range []string{"no colon here\n", "/abs/x.ko:\n", "kernel/x.ko: ../../etc/passwd\n", ": kernel/x.ko\n"} {
		if _, err := ParseModulesDep(strings.NewReader(in)); err == nil {
			t.Errorf("ParseModulesDep(%q) succeeded, want an error", in)
		}
	}
}

// TestDebianKernel resolves the default guest modules from Debian's real
// kernel, which ships no modules.dep: the order comes from .modinfo.
func TestDebianKernel(t *testing.T) {
	k := kerneltest.Debian(t)
	idx, err := Load(k.ModulesDir)
	if err != nil {
		t.Fatal(err)
	}
	files, err := idx.Resolve([]string{"virtio_console", "dm-verity", "virtio_pci", "vmw_vsock_virtio_transport", "9pnet_virtio", "erofs"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, f := range files {
		pos[Name(f)] = i
		if _, err := os.Stat(filepath.Join(k.ModulesDir, f)); err != nil {
			t.Errorf("resolved file %s missing: %v", f, err)
		}
	}
	before := [][2]string{
		{"virtio_ring", "virtio"}, {"virtio", "virtio_console"}, {"dm_mod", "dm_verity"},
		{"dm_bufio", "dm_verity"}, {"vsock", "vmw_vsock_virtio_transport"}, {"9pnet", "9pnet_virtio"},
		// libcrc32c asks the crypto API for crc32c (softdep pre: crc32c):
		// without it, it and erofs fail to load.
		{"crc32c_generic", "libcrc32c"}, {"libcrc32c", "erofs"},
	}
	for _, b := range before {
		i, ok1 := pos[b[0]]
		j, ok2 := pos[b[1]]
		if !ok1 || !ok2 || i >= j {
			t.Errorf("%s must load before %s; order %v", b[0], b[1], names(files))
		}
	}
}

func FuzzParseModulesDep(f *testing.F) {
	b, _ := os.ReadFile("testdata/modules.dep")
	f.Add(string(b))
	f.Add("a.ko: b.ko\nb.ko:\n")
	f.Fuzz(func(t *testing.T, s string) {
		idx, err := ParseModulesDep(strings.NewReader(s))
		if err != nil {
			return
		}
		for n := range idx.Path {
			idx.Resolve([]string{n}, nil) // must not panic or loop
		}
	})
}

// TestLoadCompressedModinfo indexes a modules directory without modules.dep
// whose modules are compressed three ways, as Fedora and Azure Linux ship them.
func TestLoadCompressedModinfo(t *testing.T) {
	dir := t.TempDir()
	mods := []struct{ path, name, deps string }{
		{"kernel/drivers/virtio/virtio_ring.ko.xz", "virtio_ring", ""},
		{"kernel/drivers/virtio/virtio.ko.zst", "virtio", "virtio_ring"},
		{"kernel/drivers/char/virtio_console.ko.gz", "virtio_console", "virtio,virtio_ring"},
		{"kernel/drivers/md/dm-verity.ko", "dm_verity", "dm-bufio"},
		{"kernel/drivers/md/dm-bufio.ko.xz", "dm_bufio", ""},
	}
	for _, m := range mods {
		p := filepath.Join(dir, m.path)
		os.MkdirAll(filepath.Dir(p), 0o755)
		var deps []string
		if m.deps != "" {
			deps = strings.Split(m.deps, ",")
		}
		ext := m.path[strings.Index(m.path, ".ko"):]
		if err := os.WriteFile(p, kmodtest.Compress(ext, kmodtest.Module(m.name, deps...)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(dir, "kernel/not-a-module.txt"), []byte("x"), 0o644)
	idx, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		mods []string
		want string
	}{
		{[]string{"virtio_console"}, "kernel/drivers/virtio/virtio_ring.ko.xz kernel/drivers/virtio/virtio.ko.zst kernel/drivers/char/virtio_console.ko.gz"},
		{[]string{"dm-verity"}, "kernel/drivers/md/dm-bufio.ko.xz kernel/drivers/md/dm-verity.ko"},
	}
	for _, tt := range tests {
		got, err := idx.Resolve(tt.mods, nil)
		if err != nil {
			t.Fatal(err)
		}
		if g := strings.Join(got, " "); g != tt.want {
			t.Errorf("Resolve(%v) = %s, want %s", tt.mods, g, tt.want)
		}
	}
	for _, m := range mods {
		b, err := ReadModule(filepath.Join(dir, m.path))
		if err != nil {
			t.Fatalf("ReadModule(%s): %v", m.path, err)
		}
		if string(b[:4]) != "\x7fELF" {
			t.Errorf("ReadModule(%s) is not an ELF object", m.path)
		}
	}
}

func TestReadModuleRejects(t *testing.T) {
	dir := t.TempDir()
	for name, data := range map[string][]byte{
		"bad.ko.xz":  []byte("not xz"),
		"bad.ko.zst": []byte("not zstd"),
		"bad.ko.gz":  []byte("not gzip"),
		"text.ko":    []byte("plain text"),
		"text.ko.gz": kmodtest.Compress(".ko.gz", []byte("gzip, but not ELF")),
	} {
		p := filepath.Join(dir, name)
		os.WriteFile(p, data, 0o644)
		if _, err := ReadModule(p); err == nil {
			t.Errorf("ReadModule(%s) succeeded, want an error", name)
		}
	}
}

func TestPlainName(t *testing.T) {
	for in, want := range map[string]string{
		"kernel/a.ko": "kernel/a.ko", "kernel/a.ko.xz": "kernel/a.ko", "a.ko.zst": "a.ko", "a.ko.gz": "a.ko",
	} {
		if got := PlainName(in); got != want {
			t.Errorf("PlainName(%s) = %s, want %s", in, got, want)
		}
	}
}

func TestParseSoftPre(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"pre: crc32c", []string{"crc32c"}},
		{"pre: a b-c post: d", []string{"a", "b_c"}},
		{"post: d pre: e", []string{"e"}},
		{"", nil},
	}
	for _, tt := range tests {
		if got := parseSoftPre(tt.in); !slices.Equal(got, tt.want) {
			t.Errorf("parseSoftPre(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
