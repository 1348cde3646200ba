package pull

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Cache is a content-addressed store of verified layer blobs, keyed by
// digest. A blob is only visible under its digest once its bytes hashed to
// that digest; concurrent requests for one digest share a single download.
type Cache struct {
	dir string

	mu       sync.Mutex
	inflight map[string]*fetchCall

	fetches atomic.Int64
}

type fetchCall struct {
	done chan struct{}
	err  error
}

// NewCache opens (creating) a cache directory.
func NewCache(dir string) (*Cache, error) {
	if err := os.MkdirAll(filepath.Join(dir, "sha256"), 0o700); err != nil {
		return nil, fmt.Errorf("layer cache: %w", err)
	}
	return &Cache{dir: dir, inflight: map[string]*fetchCall{}}, nil
}

// Fetches is the number of blob downloads the cache has made.
func (c *Cache) Fetches() int64 { return c.fetches.Load() }

func (c *Cache) path(d v1.Hash) string { return filepath.Join(c.dir, d.Algorithm, d.Hex) }

// Open returns a reader of a verified blob already in the cache.
func (c *Cache) Open(d v1.Hash) (*os.File, error) { return os.Open(c.path(d)) }

// ensure makes the blob with descriptor desc present, downloading it from
// repo once.
func (c *Cache) ensure(ctx context.Context, repo name.Repository, desc v1.Descriptor, opts []remote.Option) error {
	if desc.Digest.Algorithm != "sha256" || len(desc.Digest.Hex) != 64 {
		return fmt.Errorf("layer digest %s: only sha256 is supported", desc.Digest)
	}
	key := desc.Digest.String()
	for {
		if _, err := os.Stat(c.path(desc.Digest)); err == nil {
			return nil
		}
		c.mu.Lock()
		call, busy := c.inflight[key]
		if !busy {
			call = &fetchCall{done: make(chan struct{})}
			c.inflight[key] = call
			c.mu.Unlock()
			call.err = c.download(ctx, repo, desc, opts)
			c.mu.Lock()
			delete(c.inflight, key)
			c.mu.Unlock()
			close(call.done)
			return call.err
		}
		c.mu.Unlock()
		select {
		case <-call.done:
			if call.err == nil {
				return nil
			}
			// The other caller failed (maybe its context ended): try ourselves.
			if ctx.Err() != nil {
				return ctx.Err()
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// DigestMismatchError reports a blob whose bytes do not hash to its digest.
type DigestMismatchError struct {
	Want, Got string
}

func (e *DigestMismatchError) Error() string {
	return fmt.Sprintf("digest mismatch: expected %s, content hashes to %s", e.Want, e.Got)
}

func (c *Cache) download(ctx context.Context, repo name.Repository, desc v1.Descriptor, opts []remote.Option) error {
	c.fetches.Add(1)
	l, err := remote.Layer(repo.Digest(desc.Digest.String()), append(opts, remote.WithContext(ctx))...)
	if err != nil {
		return fmt.Errorf("layer %s: %w", desc.Digest, err)
	}
	rc, err := l.Compressed()
	if err != nil {
		return fmt.Errorf("layer %s: %w", desc.Digest, err)
	}
	defer rc.Close()
	tmp, err := os.CreateTemp(filepath.Join(c.dir, desc.Digest.Algorithm), ".partial-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	h := sha256.New()
	// Read one byte past the declared size so an oversized blob is noticed.
	n, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(rc, desc.Size+1))
	got := "sha256:" + hex.EncodeToString(h.Sum(nil))
	if err != nil {
		// go-containerregistry checks the digest at EOF as well: say so plainly.
		if isVerifyErr(err) {
			return fmt.Errorf("layer %s: %w", desc.Digest, &DigestMismatchError{Want: desc.Digest.String(), Got: got})
		}
		return fmt.Errorf("layer %s: download: %w", desc.Digest, err)
	}
	if n != desc.Size {
		return fmt.Errorf("layer %s: size %d, manifest says %d: %w", desc.Digest, n, desc.Size,
			&DigestMismatchError{Want: desc.Digest.String(), Got: got})
	}
	if got != desc.Digest.String() {
		return fmt.Errorf("layer %s: %w", desc.Digest, &DigestMismatchError{Want: desc.Digest.String(), Got: got})
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), c.path(desc.Digest))
}

// isVerifyErr recognises go-containerregistry's own digest check failing at EOF.
func isVerifyErr(err error) bool {
	return strings.Contains(err.Error(), "error verifying")
}
