// Package client is the KBS protocol client the guest uses: it attests with
// SNP evidence (auth → attest), keeps the session and token until they
// expire, and fetches resources, which arrive as JWE encrypted to an
// ephemeral TEE key that never leaves the guest.
package client

import (
	"bytes"
	"context"
	"crypto/tls"
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
	// CertPin is the SHA-256 of the KBS's TLS leaf certificate or of its
	// public key (hex or base64, see ParsePin). Alone it replaces chain
	// verification; with CACert both must hold.
	CertPin string
	// Retries bounds attempts per request on network errors (default 3).
	Retries int
	// Backoff is the first pause between retries (default 100ms), doubling
	// up to MaxBackoff (default 2s).
	Backoff    time.Duration
	MaxBackoff time.Duration
	// HTTPClient overrides the transport (tests); CACert and CertPin are
	// then ignored.
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

// Client talks to one KBS. It is safe for concurrent use.
type Client struct {
	cfg  Config
	http *http.Client

	mu  sync.Mutex
	cur *attested
}

// attested is the outcome of one attestation: the token and the private
// key the KBS encrypts to for that token, kept together so that a resource
// is always decrypted with the key its token names.
type attested struct {
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
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 2 * time.Second
	}
	hc := cfg.HTTPClient
	if hc == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		// The workload endpoint fetches for many containers at once; keep
		// enough warm connections that it does not redo TLS handshakes.
		tr.MaxIdleConnsPerHost = 16
		tc, err := TLSConfig(cfg.CACert, cfg.CertPin)
		if err != nil {
			return nil, err
		}
		if tc != nil {
			tr.TLSClientConfig = tc
		}
		hc = &http.Client{Transport: tr, Timeout: 30 * time.Second}
	}
	jar, _ := cookiejar.New(nil)
	c := *hc
	c.Jar = jar
	return &Client{cfg: cfg, http: &c}, nil
}

// backoff is the pause after the attempt-th failure (0-based): base
// doubling, capped.
func backoff(base, max time.Duration, attempt int) time.Duration {
	d := base
	for i := 0; i < attempt && d < max; i++ {
		d *= 2
	}
	return min(d, max)
}

// permanent reports errors that another attempt cannot fix: the KBS's
// certificate is not the one we trust.
func permanent(err error) bool {
	var cv *tls.CertificateVerificationError
	return errors.Is(err, ErrPinMismatch) || errors.As(err, &cv)
}

// do sends a request, retrying network errors up to cfg.Retries attempts
// with a doubling pause. Answers of any status are returned as they are.
func (c *Client) do(ctx context.Context, method, path string, body []byte, bearer string) (*http.Response, []byte, error) {
	var last error
	for attempt := 0; attempt < c.cfg.Retries; attempt++ {
		if attempt > 0 {
			t := time.NewTimer(backoff(c.cfg.Backoff, c.cfg.MaxBackoff, attempt-1))
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, nil, fmt.Errorf("kbs: %s %s: %w (after: %v)", method, path, ctx.Err(), last)
			case <-t.C:
			}
		}
		var rd io.Reader
		if body != nil {
			rd = bytes.NewReader(body)
		}
		req, err := http.NewRequestWithContext(ctx, method, c.cfg.URL+path, rd)
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
			b, rerr := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
			resp.Body.Close()
			if rerr == nil {
				return resp, b, nil
			}
			err = rerr
		}
		if ctx.Err() != nil {
			return nil, nil, fmt.Errorf("kbs: %s %s: %w", method, path, ctx.Err())
		}
		if permanent(err) {
			return nil, nil, fmt.Errorf("kbs TLS: %s %s: %w", method, path, err)
		}
		last = err
	}
	return nil, nil, fmt.Errorf("%w after %d attempts: %s %s: %v", ErrUnreachable, c.cfg.Retries, method, path, last)
}

// maxAnswer bounds what is read of a KBS answer.
const maxAnswer = 4 << 20

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
	ch, err := protocol.ParseChallenge(body)
	if err != nil {
		return "", fmt.Errorf("kbs: %w", err)
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
	c.cur = &attested{key: key, token: tr.Token, expires: tokenExpiry(tr.Token)}
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

// current returns the attestation in force, attesting when there is none
// or its token expires within ten seconds.
func (c *Client) current(ctx context.Context) (*attested, error) {
	c.mu.Lock()
	cur := c.cur
	c.mu.Unlock()
	if cur != nil && time.Until(cur.expires) > 10*time.Second {
		return cur, nil
	}
	if _, err := c.Attest(ctx); err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur, nil
}

// Token returns a valid token, attesting when there is none.
func (c *Client) Token(ctx context.Context) (string, error) {
	cur, err := c.current(ctx)
	if err != nil {
		return "", err
	}
	return cur.token, nil
}

// GetResource fetches and decrypts <repo>/<type>/<tag>. A 401 on the
// resource (the KBS restarted, or forgot the token) triggers exactly one
// new attestation and one more fetch.
func (c *Client) GetResource(ctx context.Context, path string) ([]byte, error) {
	if _, err := protocol.ParseResourcePath(path); err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		cur, err := c.current(ctx)
		if err != nil {
			return nil, err
		}
		resp, body, err := c.do(ctx, http.MethodGet, "/kbs/v0/resource/"+path, nil, cur.token)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode == http.StatusUnauthorized && attempt == 0 {
			c.mu.Lock()
			if c.cur == cur {
				c.cur = nil
			}
			c.mu.Unlock()
			continue
		}
		if resp.StatusCode != http.StatusOK {
			return nil, kbsError(resp, body)
		}
		return cur.key.Decrypt(body)
	}
}
