package rootfscli

import (
	"bytes"
	"context"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var rootLine = regexp.MustCompile(`(?m)^Root hash:\s+([0-9a-f]{64})$`)

func TestVerityFormatAndVerify(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	b := make([]byte, 300*4096)
	rand.New(rand.NewSource(1)).Read(b)
	if err := os.WriteFile(data, b, 0o644); err != nil {
		t.Fatal(err)
	}
	hash := filepath.Join(dir, "hash")
	var out bytes.Buffer
	// Flags after the positionals, as veritysetup allows.
	if err := Run(context.Background(), []string{"verity", "format", data, hash, "--salt", "abcd"}, &out, &out); err != nil {
		t.Fatal(err)
	}
	m := rootLine.FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("no Root hash line in:\n%s", out.String())
	}
	for _, want := range []string{"Hash type:", "Data blocks:     \t300", "Salt:            \tabcd", "Hash algorithm:  \tsha256"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	theirs, err := exec.Command("veritysetup", "format", data, filepath.Join(dir, "h2"), "--salt", "abcd").CombinedOutput()
	if err != nil {
		t.Fatalf("veritysetup: %v\n%s", err, theirs)
	}
	if tm := rootLine.FindStringSubmatch(string(theirs)); tm == nil || tm[1] != m[1] {
		t.Fatalf("root hash %s, veritysetup %v", m[1], tm)
	}
	out.Reset()
	if err := Run(context.Background(), []string{"verity", "verify", data, hash, m[1]}, &out, &out); err != nil {
		t.Fatalf("verify: %v", err)
	}
	b[4096*7] ^= 1
	os.WriteFile(data, b, 0o644)
	if err := Run(context.Background(), []string{"verity", "verify", data, hash, m[1]}, &out, &out); err == nil {
		t.Fatal("verify accepted tampered data")
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{nil, {"verity"}, {"verity", "format", "x"}, {"verity", "verify", "a", "b", "nothex"}, {"build"}, {"frobnicate"}} {
		if err := Run(context.Background(), args, &bytes.Buffer{}, &bytes.Buffer{}); err == nil {
			t.Errorf("Run(%v) succeeded, want an error", args)
		}
	}
}
