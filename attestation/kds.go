package attestation

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/google/go-sev-guest/verify/trust"
)

// CachingGetter serves AMD KDS documents (VCEK certificates, certificate
// chains) from memory and an optional directory, and asks Next only for
// what it has not seen. Fetches counts the calls to Next.
type CachingGetter struct {
	Dir     string
	Next    trust.HTTPSGetter
	Fetches atomic.Int64

	mu  sync.Mutex
	mem map[string][]byte
}

func (g *CachingGetter) file(url string) string {
	sum := sha256.Sum256([]byte(url))
	return filepath.Join(g.Dir, hex.EncodeToString(sum[:]))
}

// Get implements trust.HTTPSGetter.
func (g *CachingGetter) Get(url string) ([]byte, error) {
	return g.GetContext(context.Background(), url)
}

// GetContext implements trust.ContextHTTPSGetter.
func (g *CachingGetter) GetContext(ctx context.Context, url string) ([]byte, error) {
	g.mu.Lock()
	if b, ok := g.mem[url]; ok {
		g.mu.Unlock()
		return b, nil
	}
	g.mu.Unlock()
	if g.Dir != "" {
		if b, err := os.ReadFile(g.file(url)); err == nil {
			g.remember(url, b)
			return b, nil
		}
	}
	if g.Next == nil {
		return nil, fmt.Errorf("kds %s: not cached and fetching is disabled", url)
	}
	g.Fetches.Add(1)
	var b []byte
	var err error
	if cg, ok := g.Next.(trust.ContextHTTPSGetter); ok {
		b, err = cg.GetContext(ctx, url)
	} else {
		b, err = g.Next.Get(url)
	}
	if err != nil {
		return nil, err
	}
	g.remember(url, b)
	if g.Dir != "" {
		if err := os.MkdirAll(g.Dir, 0o755); err == nil {
			tmp := g.file(url) + ".tmp"
			if os.WriteFile(tmp, b, 0o644) == nil {
				os.Rename(tmp, g.file(url))
			}
		}
	}
	return b, nil
}

func (g *CachingGetter) remember(url string, b []byte) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.mem == nil {
		g.mem = map[string][]byte{}
	}
	g.mem[url] = b
}
