package kernel

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckConfig(t *testing.T) {
	p := filepath.Join(t.TempDir(), "config")
	os.WriteFile(p, []byte("CONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\nCONFIG_D=\"x\"\n"), 0o644)
	if err := CheckConfig(p, []string{"CONFIG_A", "CONFIG_B"}); err != nil {
		t.Fatal(err)
	}
	err := CheckConfig(p, []string{"CONFIG_A", "CONFIG_C", "CONFIG_D"})
	if !errors.Is(err, ErrMissingConfig) || !strings.Contains(err.Error(), "CONFIG_C, CONFIG_D") {
		t.Fatalf("error = %v, want missing CONFIG_C, CONFIG_D", err)
	}
}

func TestFind(t *testing.T) {
	root := t.TempDir()
	if _, err := Find(root); err == nil {
		t.Fatal("Find on an empty tree succeeded")
	}
	os.MkdirAll(filepath.Join(root, "lib/modules/6.6.0-azl/kernel"), 0o755)
	os.MkdirAll(filepath.Join(root, "boot"), 0o755)
	if _, err := Find(root); err == nil {
		t.Fatal("Find without a vmlinuz succeeded")
	}
	os.WriteFile(filepath.Join(root, "boot/vmlinuz-6.6.0-azl"), []byte("k"), 0o644)
	os.WriteFile(filepath.Join(root, "boot/config-6.6.0-azl"), []byte("CONFIG_A=y\n"), 0o644)
	k, err := Find(root)
	if err != nil {
		t.Fatal(err)
	}
	if k.Version != "6.6.0-azl" || filepath.Base(k.Vmlinuz) != "vmlinuz-6.6.0-azl" || k.Config == "" {
		t.Fatalf("Find = %+v", k)
	}
}
