// Package guestpull is the agent's image service: it pulls the image a
// container's image_guest_pull storage names, inside the guest, into that
// storage's mount point. Its inputs are trusted only as far as they are
// measured: the signature policy and the registry credentials come from the
// agent configuration (the measured command line or the initdata's
// cdh.toml) as kbs:/// resource URIs, fetched after attestation, or as
// files in the measured guest image. What the host sends (the image
// reference) is checked against that policy, and every byte pulled is
// checked against the digests the manifest names.
package guestpull

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/BurntSushi/toml"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/cocoon-containers/cocoon/image/pull"
	"github.com/cocoon-containers/cocoon/image/sigpolicy"
	"github.com/cocoon-containers/cocoon/kbs-client/protocol"
)

// Resources fetches a KBS resource ("repo/type/tag") after attestation;
// *kbs-client/client.Client implements it.
type Resources interface {
	GetResource(ctx context.Context, path string) ([]byte, error)
}

// DefaultWorkDir holds the layer cache in the guest.
const DefaultWorkDir = "/run/cocoon/image"

// Config configures a Service.
type Config struct {
	// WorkDir holds the layer cache shared by every pull (DefaultWorkDir).
	WorkDir string
	// PolicyURI names the containers-policy.json signature policy: a
	// kbs:///repo/type/tag resource or an absolute path in the guest
	// image. Empty means no signature policy: every image is accepted,
	// as in the confidential containers image service; the agent policy
	// can still pin references by digest.
	PolicyURI string
	// AuthURI names registry credentials in the docker config.json shape,
	// the same way. Empty means anonymous pulls.
	AuthURI string
	// InsecureRegistries may be reached over plain HTTP (host:port as in
	// the image reference).
	InsecureRegistries []string
	// AllowPlainHTTPLoopback permits plain HTTP to loopback registries.
	AllowPlainHTTPLoopback bool
	// DialAddrs redirects connections: a registry's host:port, as image
	// names write it, to the ip:port the guest reaches it at. URLs, TLS
	// server names and the signature policy keep the name.
	DialAddrs map[string]string
	// KBS resolves kbs:/// URIs; nil when the guest has no KBS, in which
	// case such URIs make every pull fail.
	KBS Resources
	// Decrypter handles encrypted layers; without it they are refused.
	Decrypter pull.LayerDecrypter
	// Platform to select from an index (linux/amd64 when nil).
	Platform *v1.Platform
	// Transport underlies registry connections (tests).
	Transport http.RoundTripper
	Logger    *slog.Logger
}

// Service pulls images for the storage manager. It is safe for concurrent
// use; pulls of images sharing layers fetch each layer once.
type Service struct {
	cfg   Config
	log   *slog.Logger
	cache *pull.Cache

	mu     sync.Mutex
	loaded bool
	policy *sigpolicy.Policy
	auth   *pull.AuthConfig
}

// New checks cfg and prepares the layer cache.
func New(cfg Config) (*Service, error) {
	if cfg.WorkDir == "" {
		cfg.WorkDir = DefaultWorkDir
	}
	for _, u := range []string{cfg.PolicyURI, cfg.AuthURI} {
		if err := checkURI(u); err != nil {
			return nil, err
		}
	}
	for _, r := range cfg.InsecureRegistries {
		if r == "" || strings.ContainsAny(r, "/ \t\n@") {
			return nil, fmt.Errorf("image service: insecure registry %q: want host or host:port", r)
		}
	}
	if err := os.MkdirAll(filepath.Join(cfg.WorkDir, "layers"), 0o700); err != nil {
		return nil, fmt.Errorf("image service: %w", err)
	}
	cache, err := pull.NewCache(filepath.Join(cfg.WorkDir, "layers"))
	if err != nil {
		return nil, fmt.Errorf("image service: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if len(cfg.DialAddrs) > 0 {
		base, ok := cfg.Transport.(*http.Transport)
		if cfg.Transport == nil {
			base, ok = http.DefaultTransport.(*http.Transport), true
		}
		if !ok {
			return nil, fmt.Errorf("image service: registry addresses need an *http.Transport")
		}
		tr := base.Clone()
		dial := tr.DialContext
		if dial == nil {
			dial = (&net.Dialer{}).DialContext
		}
		addrs := cfg.DialAddrs
		tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			if to, ok := addrs[addr]; ok {
				addr = to
			}
			return dial(ctx, network, addr)
		}
		cfg.Transport = tr
	}
	return &Service{cfg: cfg, log: log, cache: cache}, nil
}

// checkURI accepts "", a kbs:/// resource URI or an absolute clean path.
func checkURI(u string) error {
	if u == "" {
		return nil
	}
	if _, ok, err := protocol.ResourceURIPath(u); ok {
		if err != nil {
			return fmt.Errorf("image service: %q: %w", u, err)
		}
		return nil
	}
	if !filepath.IsAbs(u) || filepath.Clean(u) != u {
		return fmt.Errorf("image service: %q: want kbs:///repo/type/tag or an absolute path", u)
	}
	return nil
}

// ErrNoKBS is wrapped when a kbs:/// URI is configured but no KBS is.
var ErrNoKBS = errors.New("no KBS is configured to resolve kbs:/// URIs")

// fetch reads a kbs:/// resource or a file.
func (s *Service) fetch(ctx context.Context, uri string) ([]byte, error) {
	if p, ok, err := protocol.ResourceURIPath(uri); ok {
		if err != nil {
			return nil, fmt.Errorf("%s: %w", uri, err)
		}
		if s.cfg.KBS == nil {
			return nil, fmt.Errorf("%s: %w", uri, ErrNoKBS)
		}
		b, err := s.cfg.KBS.GetResource(ctx, p)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", uri, err)
		}
		return b, nil
	}
	if err := checkURI(uri); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(uri)
	if err != nil {
		return nil, err
	}
	return b, nil
}

// load fetches the policy and the credentials once. A failure is not
// remembered: the next pull tries again (the KBS may have been down), and
// until then every pull fails closed.
func (s *Service) load(ctx context.Context) (*sigpolicy.Policy, *pull.AuthConfig, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.loaded {
		return s.policy, s.auth, nil
	}
	var pol *sigpolicy.Policy
	if u := s.cfg.PolicyURI; u != "" {
		b, err := s.fetch(ctx, u)
		if err != nil {
			return nil, nil, fmt.Errorf("image signature policy: %w", err)
		}
		pol, err = sigpolicy.ParseWith(b, func(keyPath string) ([]byte, error) { return s.fetch(ctx, keyPath) })
		if err != nil {
			return nil, nil, fmt.Errorf("image signature policy %s: %w", u, err)
		}
	}
	var auth *pull.AuthConfig
	if u := s.cfg.AuthURI; u != "" {
		b, err := s.fetch(ctx, u)
		if err != nil {
			return nil, nil, fmt.Errorf("registry credentials: %w", err)
		}
		auth, err = pull.ParseAuthConfig(b)
		clear(b)
		if err != nil {
			return nil, nil, fmt.Errorf("registry credentials %s: %w", u, err)
		}
	}
	s.policy, s.auth, s.loaded = pol, auth, true
	s.log.InfoContext(ctx, "image service configured", "signature_policy", s.cfg.PolicyURI != "",
		"registry_credentials", s.cfg.AuthURI != "")
	return pol, auth, nil
}

// PullImage pulls image into dest, which must be missing or an empty
// directory; on error dest is left as it was.
func (s *Service) PullImage(ctx context.Context, image, dest string) error {
	pol, auth, err := s.load(ctx)
	if err != nil {
		return err
	}
	o := pull.Options{
		Platform:               s.cfg.Platform,
		Auth:                   auth,
		AllowPlainHTTPLoopback: s.cfg.AllowPlainHTTPLoopback,
		InsecureRegistries:     s.cfg.InsecureRegistries,
		Decrypter:              s.cfg.Decrypter,
		Cache:                  s.cache,
		Transport:              s.cfg.Transport,
	}
	if pol != nil {
		o.Verifier = pol
	}
	res, err := pull.Pull(ctx, image, dest, o)
	if errors.Is(err, pull.ErrEncryptedLayer) {
		return fmt.Errorf("%w: the keys of encrypted layers come from the KBS after attestation, and this guest has no KBS (cocoon.kbs_url or the initdata's cdh.toml) or no attestation", err)
	}
	if err != nil {
		return err
	}
	s.log.InfoContext(ctx, "image pulled", "image", image, "digest", res.Digest.String(), "layers", len(res.Layers))
	return nil
}

// ImageConfig is the [image] table of the confidential data hub's
// cdh.toml, the part the guest-pull service reads.
type ImageConfig struct {
	ImageSecurityPolicyURI              string `toml:"image_security_policy_uri"`
	AuthenticatedRegistryCredentialsURI string `toml:"authenticated_registry_credentials_uri"`
}

// FromCDHConfig reads the [image] table of a cdh.toml document.
func FromCDHConfig(doc string) (ImageConfig, error) {
	var c struct {
		Image ImageConfig `toml:"image"`
	}
	if _, err := toml.Decode(doc, &c); err != nil {
		return ImageConfig{}, fmt.Errorf("cdh.toml: %w", err)
	}
	for _, u := range []string{c.Image.ImageSecurityPolicyURI, c.Image.AuthenticatedRegistryCredentialsURI} {
		if err := checkURI(u); err != nil {
			return ImageConfig{}, fmt.Errorf("cdh.toml [image]: %w", err)
		}
	}
	return c.Image, nil
}
