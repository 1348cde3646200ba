package verity

import (
	"bytes"
	"encoding/hex"
	"errors"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
)

// writeData writes size pseudo-random bytes (sparse zeros past dense) to a file.
func writeData(t *testing.T, dir string, size, dense int64, seed int64) string {
	t.Helper()
	path := filepath.Join(dir, "data.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if dense > size {
		dense = size
	}
	buf := make([]byte, dense)
	rand.New(rand.NewSource(seed)).Read(buf)
	if _, err := f.Write(buf); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return path
}

func ourFormat(t *testing.T, data, hash string, p Params) *Result {
	t.Helper()
	in, err := os.Open(data)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	st, _ := in.Stat()
	out, err := os.Create(hash)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	res, err := Format(in, st.Size(), out, p)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

var rootHashLine = regexp.MustCompile(`Root hash:\s+([0-9a-f]+)`)

func veritysetup(t *testing.T, args ...string) (string, error) {
	t.Helper()
	if _, err := exec.LookPath("veritysetup"); err != nil {
		t.Fatalf("veritysetup not installed (make deps installs cryptsetup-bin): %v", err)
	}
	out, err := exec.Command("veritysetup", args...).CombinedOutput()
	return string(out), err
}

func TestRootHashMatchesVeritysetup(t *testing.T) {
	tests := []struct {
		name        string
		size, dense int64
		salt        string
		hashBlock   int
	}{
		{name: "one block", size: 4096, dense: 4096, salt: "00ff"},
		{name: "two blocks", size: 8192, dense: 8192, salt: ""},
		{name: "one full hash block", size: 128 * 4096, dense: 128 * 4096, salt: "0102030405060708"},
		{name: "two levels", size: 129 * 4096, dense: 129 * 4096, salt: "aa"},
		{name: "three levels sparse", size: 70 << 20, dense: 1 << 20, salt: "5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed"},
		{name: "small hash blocks", size: 300 * 4096, dense: 300 * 4096, salt: "01", hashBlock: 1024},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			data := writeData(t, dir, tt.size, tt.dense, int64(i))
			salt, _ := hex.DecodeString(tt.salt)
			p := Params{Salt: salt, HashBlockSize: tt.hashBlock, UUID: [16]byte{0xc0, 0xc0, 6: 0x40, 8: 0x80, 15: byte(i)}}
			ours := ourFormat(t, data, filepath.Join(dir, "ours.hash"), p)

			args := []string{"format", data, filepath.Join(dir, "theirs.hash"), "--uuid", FormatUUID(p.UUID)}
			if tt.salt != "" {
				args = append(args, "--salt", tt.salt)
			} else {
				args = append(args, "--salt", "-")
			}
			if tt.hashBlock != 0 {
				args = append(args, "--hash-block-size", "1024")
			}
			out, err := veritysetup(t, args...)
			if err != nil {
				t.Fatalf("veritysetup format: %v\n%s", err, out)
			}
			m := rootHashLine.FindStringSubmatch(out)
			if m == nil {
				t.Fatalf("no root hash in veritysetup output:\n%s", out)
			}
			if got, want := hex.EncodeToString(ours.RootHash), m[1]; got != want {
				t.Fatalf("root hash = %s, veritysetup says %s", got, want)
			}
			// With the same UUID the hash files are the same bytes.
			a, _ := os.ReadFile(filepath.Join(dir, "ours.hash"))
			b, _ := os.ReadFile(filepath.Join(dir, "theirs.hash"))
			if !bytes.Equal(a, b) {
				t.Errorf("hash file (%d bytes) differs from veritysetup's (%d bytes)", len(a), len(b))
			}
			// veritysetup accepts our hash file, superblock included.
			if out, err := veritysetup(t, "verify", data, filepath.Join(dir, "ours.hash"), m[1]); err != nil {
				t.Fatalf("veritysetup verify of our hash file: %v\n%s", err, out)
			}
			// Our verifier accepts veritysetup's hash file and our own.
			for _, h := range []string{"ours.hash", "theirs.hash"} {
				df, _ := os.Open(data)
				hf, _ := os.Open(filepath.Join(dir, h))
				err := Verify(df, hf, ours.RootHash)
				df.Close()
				hf.Close()
				if err != nil {
					t.Fatalf("Verify(%s): %v", h, err)
				}
			}
		})
	}
}

func TestFlippedByteIsDetected(t *testing.T) {
	dir := t.TempDir()
	data := writeData(t, dir, 200*4096, 200*4096, 7)
	hash := filepath.Join(dir, "h")
	res := ourFormat(t, data, hash, Params{Salt: []byte{1, 2, 3}})
	root := hex.EncodeToString(res.RootHash)

	b, err := os.ReadFile(data)
	if err != nil {
		t.Fatal(err)
	}
	b[150*4096+17] ^= 0x01
	if err := os.WriteFile(data, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := veritysetup(t, "verify", data, hash, root); err == nil {
		t.Fatalf("veritysetup verify accepted a flipped data byte:\n%s", out)
	}
	df, _ := os.Open(data)
	defer df.Close()
	hf, _ := os.Open(hash)
	defer hf.Close()
	if err := Verify(df, hf, res.RootHash); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Verify after flip = %v, want ErrCorrupt", err)
	}
}

func TestWrongRootHashIsRejected(t *testing.T) {
	dir := t.TempDir()
	data := writeData(t, dir, 4*4096, 4*4096, 3)
	hash := filepath.Join(dir, "h")
	res := ourFormat(t, data, hash, Params{})
	bad := bytes.Clone(res.RootHash)
	bad[0] ^= 0xff
	df, _ := os.Open(data)
	defer df.Close()
	hf, _ := os.Open(hash)
	defer hf.Close()
	if err := Verify(df, hf, bad); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Verify with a wrong root = %v, want ErrCorrupt", err)
	}
}

func TestFormatRejectsBadInput(t *testing.T) {
	tests := []struct {
		name string
		size int64
		have int64 // bytes the reader really has, when not size
		p    Params
	}{
		{name: "partial block", size: 5000},
		{name: "short data", size: 3 << 20, have: 2<<20 + 4096},
		{name: "empty", size: 0},
		{name: "odd block size", size: 4096, p: Params{DataBlockSize: 3000}},
		{name: "huge salt", size: 4096, p: Params{Salt: make([]byte, 300)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			have := tt.size
			if tt.have != 0 {
				have = tt.have
			}
			_, err := Format(bytes.NewReader(make([]byte, have)), tt.size, &bytes.Buffer{}, tt.p)
			if err == nil {
				t.Fatal("Format succeeded, want an error")
			}
		})
	}
}

func FuzzReadSuperblock(f *testing.F) {
	var hash bytes.Buffer
	if _, err := Format(bytes.NewReader(make([]byte, 8192)), 8192, &hash, Params{Salt: []byte{9}}); err != nil {
		f.Fatal(err)
	}
	f.Add(hash.Bytes()[:512])
	f.Add(make([]byte, 512))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < 512 {
			b = append(b, make([]byte, 512-len(b))...)
		}
		p, n, err := ReadSuperblock(bytes.NewReader(b))
		if err == nil && (n == 0 || len(p.Salt) > maxSaltSize || p.DataBlockSize < 512) {
			t.Fatalf("accepted an invalid superblock: %+v blocks=%d", p, n)
		}
	})
}
