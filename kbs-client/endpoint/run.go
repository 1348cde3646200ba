package endpoint

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/cocoon-containers/cocoon/attestation"
	"github.com/cocoon-containers/cocoon/kbs-client/client"
)

// Options are what the agent knows when it starts the endpoint.
type Options struct {
	// KBSURL is the KBS the guest attests to (required).
	KBSURL string
	// CACert is a PEM bundle trusted for the KBS's TLS certificate;
	// CACertFile is read when CACert is empty.
	CACert     []byte
	CACertFile string
	// CertPin is the SHA-256 of the KBS's certificate or public key (see
	// client.ParsePin).
	CertPin string
	// Provider produces the guest's evidence (required):
	// attestation.NewHardwareProvider, or the simulated provider in
	// binaries built with the simulated tag.
	Provider attestation.Provider
	// Logger receives request outcomes, never secrets (default slog.Default).
	Logger *slog.Logger
	// Addr is the listen address, loopback only (default DefaultAddr).
	Addr string
	// Ready, if set, is called with the listening address before serving.
	Ready func(net.Addr)
	// KBS, when set, is the client to use (the agent shares one between
	// the endpoint and its image service, so they attest once); otherwise
	// Run makes one with NewClient.
	KBS *client.Client
}

// NewClient makes the KBS client o describes.
func NewClient(o Options) (*client.Client, error) {
	if o.KBSURL == "" {
		return nil, ErrNoKBS
	}
	if o.Provider == nil {
		return nil, errors.New("kbs client: no attestation provider")
	}
	ca := o.CACert
	if len(ca) == 0 && o.CACertFile != "" {
		b, err := os.ReadFile(o.CACertFile)
		if err != nil {
			return nil, fmt.Errorf("KBS CA bundle: %w", err)
		}
		ca = b
	}
	return client.New(client.Config{URL: o.KBSURL, Provider: o.Provider, CACert: ca, CertPin: o.CertPin})
}

// ErrNoKBS is returned by Run when no KBS URL is configured.
var ErrNoKBS = errors.New("workload endpoint: no KBS URL configured")

// Run serves the workload endpoint until ctx ends, then returns nil after
// a graceful shutdown. It fails at once on a bad configuration or when the
// address cannot be bound.
func Run(ctx context.Context, o Options) error {
	if o.KBSURL == "" {
		return ErrNoKBS
	}
	if o.Provider == nil {
		return errors.New("workload endpoint: no attestation provider")
	}
	kc := o.KBS
	if kc == nil {
		var err error
		if kc, err = NewClient(o); err != nil {
			return fmt.Errorf("workload endpoint: %w", err)
		}
	}
	addr := o.Addr
	if addr == "" {
		addr = DefaultAddr
	}
	l, err := Listen(ctx, addr)
	if err != nil {
		return fmt.Errorf("workload endpoint: %w", err)
	}
	srv := New(Config{KBS: kc, Provider: o.Provider, Logger: o.Logger})
	srv.log.InfoContext(ctx, "workload endpoint serving", "address", l.Addr().String(), "kbs", o.KBSURL,
		"ca_bundle", len(o.CACert) > 0 || o.CACertFile != "", "cert_pin", o.CertPin != "")
	if o.Ready != nil {
		o.Ready(l.Addr())
	}
	return srv.Serve(ctx, l)
}

// Initdata file names the endpoint reads, as the CoCo guest components
// name them.
const (
	CDHConfigFile = "cdh.toml"
	AAConfigFile  = "aa.toml"
)

// cdhConfig is the part of the confidential data hub's cdh.toml that
// names the KBS. kbs_cert_pin is Cocoon's addition.
type cdhConfig struct {
	KBC struct {
		Name       string `toml:"name"`
		URL        string `toml:"url"`
		KBSCert    string `toml:"kbs_cert"`
		KBSCertPin string `toml:"kbs_cert_pin"`
	} `toml:"kbc"`
}

// aaConfig is the part of the attestation agent's aa.toml that names the
// KBS token issuer.
type aaConfig struct {
	TokenConfigs struct {
		KBS struct {
			URL  string `toml:"url"`
			Cert string `toml:"cert"`
		} `toml:"kbs"`
	} `toml:"token_configs"`
}

// FromConfig builds Options from the agent configuration: kbsURL from the
// kernel command line or agent.toml (cocoon.kbs_url), and the initdata
// files (the initdata "data" table, nil when there is none). Where present,
// cdh.toml's [kbc] url, kbs_cert and kbs_cert_pin come first, then aa.toml's
// [token_configs.kbs] url and cert, then kbsURL: initdata is what HOST_DATA
// binds, so a KBS chosen there is part of what the guest attests. Only the
// cc_kbc KBC is supported. An empty KBSURL in the result means no KBS is
// configured (Run then returns ErrNoKBS).
func FromConfig(kbsURL string, initdata map[string]string, p attestation.Provider, log *slog.Logger) (Options, error) {
	o := Options{KBSURL: strings.TrimSpace(kbsURL), Provider: p, Logger: log}
	var cert string
	if s, ok := initdata[AAConfigFile]; ok {
		var aa aaConfig
		if _, err := toml.Decode(s, &aa); err != nil {
			return Options{}, fmt.Errorf("initdata %s: %w", AAConfigFile, err)
		}
		if u := strings.TrimSpace(aa.TokenConfigs.KBS.URL); u != "" {
			o.KBSURL = u
		}
		if aa.TokenConfigs.KBS.Cert != "" {
			cert = aa.TokenConfigs.KBS.Cert
		}
	}
	if s, ok := initdata[CDHConfigFile]; ok {
		var cdh cdhConfig
		if _, err := toml.Decode(s, &cdh); err != nil {
			return Options{}, fmt.Errorf("initdata %s: %w", CDHConfigFile, err)
		}
		if n := cdh.KBC.Name; n != "" && n != "cc_kbc" {
			return Options{}, fmt.Errorf("initdata %s: kbc name %q unsupported: want cc_kbc", CDHConfigFile, n)
		}
		if u := strings.TrimSpace(cdh.KBC.URL); u != "" {
			o.KBSURL = u
		}
		if cdh.KBC.KBSCert != "" {
			cert = cdh.KBC.KBSCert
		}
		o.CertPin = strings.TrimSpace(cdh.KBC.KBSCertPin)
	}
	if cert != "" {
		o.CACert = []byte(cert)
	}
	if o.CertPin != "" {
		if _, err := client.ParsePin(o.CertPin); err != nil {
			return Options{}, fmt.Errorf("initdata %s: %w", CDHConfigFile, err)
		}
	}
	return o, nil
}
