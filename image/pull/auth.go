package pull

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
)

// AuthConfig holds registry credentials in the docker config.json shape:
// {"auths": {"registry.example:5000": {"auth": base64("user:pass")}}}.
// It never prints its secrets.
type AuthConfig struct {
	Auths map[string]AuthEntry `json:"auths"`
}

// AuthEntry is one registry's credentials.
type AuthEntry struct {
	Auth          string `json:"auth,omitempty"`
	Username      string `json:"username,omitempty"`
	Password      string `json:"password,omitempty"`
	IdentityToken string `json:"identitytoken,omitempty"`
	RegistryToken string `json:"registrytoken,omitempty"`
}

// String keeps credentials out of logs and error messages.
func (AuthEntry) String() string { return "AuthEntry{redacted}" }

// ParseAuthConfig reads a docker config.json-style document.
func ParseAuthConfig(b []byte) (*AuthConfig, error) {
	var c AuthConfig
	if err := json.Unmarshal(b, &c); err != nil {
		// The JSON error could quote part of a secret: say only where.
		return nil, fmt.Errorf("registry auth config is not valid JSON")
	}
	return &c, nil
}

// normalizeRegistry turns the keys people write ("https://host/v1/", "host")
// into a bare host[:port].
func normalizeRegistry(s string) string {
	s = strings.TrimPrefix(strings.TrimPrefix(s, "https://"), "http://")
	if i := strings.IndexByte(s, '/'); i >= 0 {
		s = s[:i]
	}
	if s == "docker.io" || s == "registry-1.docker.io" {
		s = "index.docker.io"
	}
	return s
}

// Resolve implements authn.Keychain.
func (c *AuthConfig) Resolve(res authn.Resource) (authn.Authenticator, error) {
	if c == nil {
		return authn.Anonymous, nil
	}
	want := normalizeRegistry(res.RegistryStr())
	for k, e := range c.Auths {
		if normalizeRegistry(k) != want {
			continue
		}
		cfg := authn.AuthConfig{Username: e.Username, Password: e.Password, IdentityToken: e.IdentityToken, RegistryToken: e.RegistryToken}
		if e.Auth != "" {
			raw, err := base64.StdEncoding.DecodeString(e.Auth)
			if err != nil {
				return nil, fmt.Errorf("registry auth for %s: auth field is not base64", k)
			}
			user, pass, ok := strings.Cut(string(raw), ":")
			if !ok {
				return nil, fmt.Errorf("registry auth for %s: auth field is not user:password", k)
			}
			cfg.Username, cfg.Password = user, pass
		}
		return authn.FromConfig(cfg), nil
	}
	return authn.Anonymous, nil
}
