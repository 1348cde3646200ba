// Package kbscli implements the kbs-client and cocoon-kbs command lines.
package kbscli

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/cocoon-containers/cocoon/attestation"
	"github.com/cocoon-containers/cocoon/kbs-client/client"
	"github.com/cocoon-containers/cocoon/kbs-client/protocol"
	"github.com/cocoon-containers/cocoon/kbs-client/server"
)

// simulatedProvider is set by the file built with the "simulated" tag.
var simulatedProvider func(hostData [32]byte, measurement [48]byte) (attestation.Provider, error)

const clientUsage = `usage: kbs-client --url URL [--cert-file PEM] [--cert-pin SHA256] [--tee snp|simulated] [--host-data HEX] [--measurement HEX] COMMAND
commands:
  get-resource --path <repo>/<type>/<tag>   attest, fetch, write the resource to stdout
  attest                                    attest and print the token
  config --admin-key FILE set-resource --path P --resource-file F
  config --admin-key FILE set-resource-policy --policy-file F`

// Client runs kbs-client.
func Client(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("kbs-client", flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("url", "", "KBS URL")
	certFile := fs.String("cert-file", "", "PEM CA bundle for the KBS's TLS certificate")
	certPin := fs.String("cert-pin", "", "SHA-256 of the KBS's TLS certificate or public key (hex or base64)")
	tee := fs.String("tee", "snp", "evidence source: snp or simulated")
	hostData := fs.String("host-data", "", "simulated HOST_DATA (64 hex)")
	meas := fs.String("measurement", "", "simulated MEASUREMENT (96 hex)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *url == "" || fs.NArg() == 0 {
		return errors.New(clientUsage)
	}
	var ca []byte
	if *certFile != "" {
		b, err := os.ReadFile(*certFile)
		if err != nil {
			return err
		}
		ca = b
	}
	rest := fs.Args()
	switch rest[0] {
	case "config":
		return config(ctx, *url, ca, *certPin, rest[1:], stdout, stderr)
	case "get-resource", "attest":
	default:
		return fmt.Errorf("unknown command %q\n%s", rest[0], clientUsage)
	}
	p, err := provider(*tee, *hostData, *meas)
	if err != nil {
		return err
	}
	c, err := client.New(client.Config{URL: *url, Provider: p, CACert: ca, CertPin: *certPin})
	if err != nil {
		return err
	}
	if rest[0] == "attest" {
		tok, err := c.Attest(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, tok)
		return nil
	}
	gfs := flag.NewFlagSet("get-resource", flag.ContinueOnError)
	gfs.SetOutput(stderr)
	path := gfs.String("path", "", "<repo>/<type>/<tag>")
	if err := gfs.Parse(rest[1:]); err != nil {
		return err
	}
	data, err := c.GetResource(ctx, strings.TrimPrefix(*path, "/"))
	if err != nil {
		return err
	}
	_, err = stdout.Write(data)
	return err
}

func provider(tee, hostData, meas string) (attestation.Provider, error) {
	switch tee {
	case "snp":
		if hostData != "" || meas != "" {
			return nil, errors.New("--host-data and --measurement apply to --tee simulated only")
		}
		return attestation.NewHardwareProvider()
	case "simulated":
		if simulatedProvider == nil {
			return nil, errors.New("this binary was built without the simulated SNP provider (build tag simulated)")
		}
		var h [32]byte
		var m [48]byte
		if err := decodeHex(hostData, h[:]); err != nil {
			return nil, fmt.Errorf("--host-data: %w", err)
		}
		if err := decodeHex(meas, m[:]); err != nil {
			return nil, fmt.Errorf("--measurement: %w", err)
		}
		return simulatedProvider(h, m)
	}
	return nil, fmt.Errorf("--tee %q: want snp or simulated", tee)
}

func decodeHex(s string, out []byte) error {
	if s == "" {
		return nil
	}
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(out) {
		return fmt.Errorf("want %d hex bytes", len(out))
	}
	copy(out, b)
	return nil
}

func config(ctx context.Context, url string, ca []byte, pin string, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("config", flag.ContinueOnError)
	fs.SetOutput(stderr)
	keyFile := fs.String("admin-key", "", "file holding the admin key")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *keyFile == "" || fs.NArg() == 0 {
		return errors.New(clientUsage)
	}
	key, err := os.ReadFile(*keyFile)
	if err != nil {
		return err
	}
	key = bytes.TrimSpace(key)
	sub := fs.Args()
	sfs := flag.NewFlagSet(sub[0], flag.ContinueOnError)
	sfs.SetOutput(stderr)
	path := sfs.String("path", "", "<repo>/<type>/<tag>")
	resFile := sfs.String("resource-file", "", "resource file")
	polFile := sfs.String("policy-file", "", "Rego policy file")
	if err := sfs.Parse(sub[1:]); err != nil {
		return err
	}
	var endpoint string
	var body []byte
	switch sub[0] {
	case "set-resource":
		if _, err := protocol.ParseResourcePath(*path); err != nil {
			return err
		}
		if body, err = os.ReadFile(*resFile); err != nil {
			return err
		}
		endpoint = "/kbs/v0/resource/" + *path
	case "set-resource-policy":
		pol, err := os.ReadFile(*polFile)
		if err != nil {
			return err
		}
		body = []byte(`{"policy":"` + base64.StdEncoding.EncodeToString(pol) + `"}`)
		endpoint = "/kbs/v0/resource-policy"
	default:
		return fmt.Errorf("unknown config command %q", sub[0])
	}
	hc := &http.Client{Timeout: 30 * time.Second}
	tc, err := client.TLSConfig(ca, pin)
	if err != nil {
		return err
	}
	if tc != nil {
		hc.Transport = &http.Transport{TLSClientConfig: tc}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(url, "/")+endpoint, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+string(key))
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("kbs: %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	fmt.Fprintln(stdout, "ok")
	return nil
}

// KBS runs cocoon-kbs until ctx ends. ready, if not nil, receives the
// listening address.
func KBS(ctx context.Context, args []string, stderr io.Writer, ready chan<- string) error {
	fs := flag.NewFlagSet("cocoon-kbs", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:8080", "listen address")
	repo := fs.String("repository", "", "resource directory (<repo>/<type>/<tag>)")
	adminKey := fs.String("admin-key", "", "file holding the admin key (enables the admin API)")
	policy := fs.String("policy", "", "resource policy (Rego, package policy, rule allow)")
	attPolicy := fs.String("attestation-policy", "", "attestation policy (Rego, package policy, rule allow over input.claims)")
	trustSim := fs.Bool("trust-simulated-snp", false, "accept reports signed by the simulated (test-only) AMD root")
	tlsCert := fs.String("tls-cert", "", "TLS certificate")
	tlsKey := fs.String("tls-key", "", "TLS key")
	insecure := fs.Bool("insecure-http", false, "serve plain HTTP")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *repo == "" {
		return errors.New("--repository is required")
	}
	if (*tlsCert == "") != (*tlsKey == "") || (*tlsCert == "" && !*insecure) || (*tlsCert != "" && *insecure) {
		return errors.New("give --tls-cert and --tls-key, or --insecure-http")
	}
	cfg := server.Config{Repository: *repo, TrustSimulated: *trustSim, Logger: slog.New(slog.NewTextHandler(stderr, nil))}
	if *adminKey != "" {
		b, err := os.ReadFile(*adminKey)
		if err != nil {
			return err
		}
		cfg.AdminKey = bytes.TrimSpace(b)
	}
	if *policy != "" {
		b, err := os.ReadFile(*policy)
		if err != nil {
			return err
		}
		cfg.ResourcePolicy = string(b)
	}
	if *attPolicy != "" {
		b, err := os.ReadFile(*attPolicy)
		if err != nil {
			return err
		}
		cfg.AttestationPolicy = string(b)
	}
	s, err := server.New(ctx, cfg)
	if err != nil {
		return err
	}
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", *listen)
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelWarn)}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		hs.Shutdown(sctx)
	}()
	cfg.Logger.Info("cocoon-kbs listening", "addr", l.Addr().String(), "tls", *tlsCert != "", "trust_simulated_snp", *trustSim)
	if ready != nil {
		ready <- l.Addr().String()
	}
	if *tlsCert != "" {
		err = hs.ServeTLS(l, *tlsCert, *tlsKey)
	} else {
		err = hs.Serve(l)
	}
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
