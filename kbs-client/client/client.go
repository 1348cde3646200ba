// Package client is the KBS protocol client the guest uses: it attests with
// SNP evidence (auth → attest), keeps the session and token until they
// expire, and fetches resources, which arrive as JWE encrypted to an
// ephemeral TEE key that never leaves the guest.
package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"strings"
	"sync"
	"time"

	"github.com/cocoon-containers/cocoon/attestation"
	"github.com/cocoon-containers/cocoon/kbs-client/protocol"
	"github.com/cocoon-containers/cocoon/kbs-client/teekey"
)

// Config configures a Client.
type Config struct {
	URL      string
	Provider attestation.Provider
	// KeyAlgorithm is protocol.AlgECDH (default) or protocol.AlgRSAOAE.
	KeyAlgorithm string
	// CACert is a PEM bundle trusted for the KBS's TLS certificate.
	CACert []byte
	// Retries bounds attempts on network errors (default 3).
	Retries int
	// Backoff is the first pause between retries (default 100ms, doubling).
	Backoff time.Duration
	// HTTPClient overrides the transport (tests).
	HTTPClient *http.Client
}

// Error is an error answer from the KBS.
type Error struct {
	Status int
	Type   string
	Detail string
}

func (e *Error) Error() string {
	return fmt.Sprintf("kbs: %d %s: %s", e.Status, strings.TrimPrefix(e.Type, protocol.ErrorTypePrefix), e.Detail)
}

// ErrUnreachable wraps network failures talking to the KBS.
var ErrUnreachable = errors.New("kbs unreachable")

// Client talks to one KBS.
type Client struct {
	cfg  Config
	http *http.Client

	mu      sync.Mutex
	key     *teekey.Key
	token   string
	expires time.Time
}

// New makes a client.
func New(cfg Config) (*Client, error) {
	if cfg.URL == "" {
		return nil, errors.New("kbs client: no URL")
	}
	cfg.URL = strings.TrimRight(cfg.URL, "/")
	if cfg.Retries <= 0 {
		cfg.Retries = 3
	}
	if cfg.Backoff <= 0 {
		cfg.Backoff = 100 * time.Millisecond
	}
	hc := cfg.HTTPClient
	if hc == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		if len(cfg.CACert) > 0 {
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(cfg.CACert) {
				return nil, errors.New("kbs client: no certificate in the CA bundle")
			}
			tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		}
		hc = &http.Client{Transport: tr, Timeout: 30 * time.Second}
	}
	jar, _ := cookiejar.New(nil)
	c := *hc
	c.Jar = jar
	return &Client{cfg: cfg, http: &c}, nil
}

// do sends a request with bounded retries on network errors.
func (c *Client) do(ctx context.Context, method, path string, body []byte, bearer string) (*http.Response, []byte, error) {
	wait := c.cfg.Backoff
	var last error
	for attempt := 0; attempt < c.cfg.Retries; attempt++ {
		req, err := http.NewRequestWithContext(ctx, method, c.cfg.URL+path, bytes.NewReader(body))
		if err != nil {
			return nil, nil, err
		}
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		resp, err := c.http.Do(req)
		if err == nil {
			b, rerr := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
			resp.Body.Close()
			if rerr == nil {
				return resp, b, nil
			}
			err = rerr
		}
		last = err
		if ctx.Err() != nil {
			break
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
		wait *= 2
	}
	return nil, nil, fmt.Errorf("%w: %s %s: %v", ErrUnreachable, method, path, last)
}

func kbsError(resp *http.Response, body []byte) error {
	var ei protocol.ErrorInformation
	if json.Unmarshal(body, &ei) != nil || ei.Type == "" {
		ei.Detail = strings.TrimSpace(string(body))
		if len(ei.Detail) > 200 {
			ei.Detail = ei.Detail[:200]
		}
	}
	return &Error{Status: resp.StatusCode, Type: ei.Type, Detail: ei.Detail}
}

// Attest runs auth and attest with fresh evidence and a fresh TEE key, and
// returns the token.
func (c *Client) Attest(ctx context.Context) (string, error) {
	if c.cfg.Provider == nil {
		return "", errors.New("kbs client: no attestation provider")
	}
	reqBody, _ := json.Marshal(protocol.Request{Version: protocol.Version, Tee: "snp", ExtraParams: json.RawMessage(`""`)})
	resp, body, err := c.do(ctx, http.MethodPost, "/kbs/v0/auth", reqBody, "")
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", kbsError(resp, body)
	}
	var ch protocol.Challenge
	if err := json.Unmarshal(body, &ch); err != nil || ch.Nonce == "" {
		return "", fmt.Errorf("kbs: malformed challenge")
	}
	key, err := teekey.New(c.cfg.KeyAlgorithm)
	if err != nil {
		return "", err
	}
	rd, err := protocol.ReportData(ch.Nonce, key.Public(), "")
	if err != nil {
		return "", err
	}
	ev, err := c.cfg.Provider.GetEvidence(ctx, rd)
	if err != nil {
		return "", fmt.Errorf("get evidence: %w", err)
	}
	evJSON, err := attestation.MarshalTrusteeSNP(ev)
	if err != nil {
		return "", err
	}
	attBody, _ := json.Marshal(protocol.Attestation{
		InitData:    json.RawMessage("null"),
		RuntimeData: protocol.RuntimeData{Nonce: ch.Nonce, TeePubKey: key.Public()},
		TeeEvidence: protocol.TeeEvidence{PrimaryEvidence: evJSON},
	})
	resp, body, err = c.do(ctx, http.MethodPost, "/kbs/v0/attest", attBody, "")
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", kbsError(resp, body)
	}
	var tr protocol.TokenResponse
	if err := json.Unmarshal(body, &tr); err != nil || tr.Token == "" {
		return "", fmt.Errorf("kbs: malformed token response")
	}
	c.mu.Lock()
	c.key, c.token, c.expires = key, tr.Token, tokenExpiry(tr.Token)
	c.mu.Unlock()
	return tr.Token, nil
}

// tokenExpiry reads "exp" from a JWT payload (unverified: only to know when
// to attest again); unknown means five minutes.
func tokenExpiry(tok string) time.Time {
	parts := strings.Split(tok, ".")
	if len(parts) == 3 {
		if b, err := decodeSegment(parts[1]); err == nil {
			var c struct {
				Exp int64 `json:"exp"`
			}
			if json.Unmarshal(b, &c) == nil && c.Exp > 0 {
				return time.Unix(c.Exp, 0)
			}
		}
	}
	return time.Now().Add(5 * time.Minute)
}

// Token returns a valid token, attesting when there is none.
func (c *Client) Token(ctx context.Context) (string, error) {
	c.mu.Lock()
	tok, exp := c.token, c.expires
	c.mu.Unlock()
	if tok != "" && time.Until(exp) > 10*time.Second {
		return tok, nil
	}
	return c.Attest(ctx)
}

// GetResource fetches and decrypts <repo>/<type>/<tag>. A 401 triggers one
// new attestation.
func (c *Client) GetResource(ctx context.Context, path string) ([]byte, error) {
	if _, err := protocol.ParseResourcePath(path); err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		tok, err := c.Token(ctx)
		if err != nil {
			return nil, err
		}
		c.mu.Lock()
		key := c.key
		c.mu.Unlock()
		resp, body, err := c.do(ctx, http.MethodGet, "/kbs/v0/resource/"+path, nil, tok)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode == http.StatusUnauthorized && attempt == 0 {
			c.mu.Lock()
			c.token = ""
			c.mu.Unlock()
			continue
		}
		if resp.StatusCode != http.StatusOK {
			return nil, kbsError(resp, body)
		}
		return key.Decrypt(body)
	}
}
