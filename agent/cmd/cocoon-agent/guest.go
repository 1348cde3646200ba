package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/cocoon-containers/cocoon/agent/config"
	"github.com/cocoon-containers/cocoon/agent/policy"
	"github.com/cocoon-containers/cocoon/attestation"
	"github.com/cocoon-containers/cocoon/image/decrypt"
	"github.com/cocoon-containers/cocoon/image/guestpull"
	"github.com/cocoon-containers/cocoon/kbs-client/client"
	"github.com/cocoon-containers/cocoon/kbs-client/endpoint"
)

// simulatedProvider is set by simulated.go, built with the "simulated" tag
// only: production agents cannot produce simulated reports.
var simulatedProvider func(hostData [32]byte, measurement [48]byte) (attestation.Provider, error)

// attestationProvider returns the evidence source the configuration names,
// nil for attestation = "none".
func attestationProvider(cfg config.Config) (attestation.Provider, error) {
	switch cfg.Attestation {
	case config.AttestationSNP:
		p, err := attestation.NewHardwareProvider()
		if err != nil {
			return nil, fmt.Errorf("attestation snp: %w", err)
		}
		return p, nil
	case config.AttestationSimulated:
		if simulatedProvider == nil {
			return nil, errors.New("attestation simulated: this agent was built without the simulated SNP provider (build tag simulated)")
		}
		var h [32]byte
		var m [48]byte
		copy(h[:], cfg.SimHostData)
		copy(m[:], cfg.SimMeasurement)
		return simulatedProvider(h, m)
	default:
		return nil, nil
	}
}

// initdataMagic starts an initdata block device.
const initdataMagic = "initdata"

// applyInitdataDevice looks for a virtio disk holding an initdata document
// and installs its policy; HOST_DATA must carry the document's digest. A
// device that is there but does not verify stops the agent: the host
// asked for a policy the guest cannot prove.
func applyInitdataDevice(ctx context.Context, e *policy.Enforcer, log *slog.Logger) (*policy.Initdata, error) {
	dev, err := findInitdataDevice("/sys/class/block", "/dev")
	if err != nil || dev == "" {
		return nil, err
	}
	f, err := os.Open(dev)
	if err != nil {
		return nil, fmt.Errorf("initdata device %s: %w", dev, err)
	}
	defer f.Close()
	id, err := policy.LoadInitdata(ctx, f)
	if err != nil {
		return nil, fmt.Errorf("initdata device %s: %w", dev, err)
	}
	if err := e.ApplyInitdata(ctx, id); err != nil {
		return nil, fmt.Errorf("initdata device %s: %w", dev, err)
	}
	log.InfoContext(ctx, "initdata policy installed", "device", dev)
	return id, nil
}

// findInitdataDevice returns the first whole virtio disk whose first bytes
// are the initdata magic, or "".
func findInitdataDevice(sysBlock, devDir string) (string, error) {
	entries, err := os.ReadDir(sysBlock)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, "vd") {
			continue
		}
		if _, err := os.Stat(filepath.Join(sysBlock, name, "partition")); err == nil {
			continue
		}
		dev := filepath.Join(devDir, name)
		f, err := os.Open(dev)
		if err != nil {
			continue
		}
		var magic [len(initdataMagic)]byte
		_, err = io.ReadFull(f, magic[:])
		f.Close()
		if err == nil && string(magic[:]) == initdataMagic {
			return dev, nil
		}
	}
	return "", nil
}

// kbsConfig reads the KBS the guest attests to from the command line or
// the initdata's cdh.toml and aa.toml, and makes the one client the
// workload endpoint and the image service share. Without a KBS, or without
// attestation, the result's KBS client is nil.
func kbsConfig(cfg config.Config, id *policy.Initdata, p attestation.Provider, log *slog.Logger) (endpoint.Options, error) {
	var files map[string]string
	if id != nil {
		files = id.Data
	}
	o, err := endpoint.FromConfig(cfg.KBSURL, files, p, log)
	if err != nil {
		return endpoint.Options{}, err
	}
	if o.KBSURL == "" {
		return o, nil
	}
	if p == nil {
		log.Warn("a KBS is configured but attestation is none: no workload endpoint, no kbs:/// resources")
		return o, nil
	}
	if o.KBS, err = endpoint.NewClient(o); err != nil {
		return endpoint.Options{}, err
	}
	return o, nil
}

// imageWorkDir holds the guest-pull layer cache.
func imageWorkDir(cfg config.Config) string { return filepath.Join(cfg.RunDir, "image") }

// imageService configures guest pulls: the signature policy and registry
// credentials from the initdata's cdh.toml [image] table, else from the
// agent configuration; kbs:/// URIs resolve through the shared KBS client.
func imageService(cfg config.Config, id *policy.Initdata, kbs *client.Client, log *slog.Logger) (*guestpull.Service, error) {
	gc := guestpull.Config{
		WorkDir:                imageWorkDir(cfg),
		PolicyURI:              cfg.ImagePolicy,
		AuthURI:                cfg.ImageRegistryAuth,
		InsecureRegistries:     cfg.ImageInsecureRegistries,
		DialAddrs:              cfg.ImageRegistryAddrs,
		AllowPlainHTTPLoopback: true, // the guest's own loopback
		Logger:                 log,
	}
	if id != nil {
		if doc, ok := id.Data[endpoint.CDHConfigFile]; ok {
			ic, err := guestpull.FromCDHConfig(doc)
			if err != nil {
				return nil, fmt.Errorf("initdata %w", err)
			}
			if ic.ImageSecurityPolicyURI != "" {
				gc.PolicyURI = ic.ImageSecurityPolicyURI
			}
			if ic.AuthenticatedRegistryCredentialsURI != "" {
				gc.AuthURI = ic.AuthenticatedRegistryCredentialsURI
			}
		}
	}
	if kbs != nil {
		gc.KBS = kbs
		// Encrypted layers: their keys are KBS resources too.
		gc.Decrypter = decrypt.New(kbs)
	}
	return guestpull.New(gc)
}

// startWorkloadEndpoint serves the CoCo-compatible endpoint on loopback
// when a KBS is configured and the guest can attest. Initdata that arrives
// later through SetPolicy does not reconfigure it.
func startWorkloadEndpoint(ctx context.Context, cfg config.Config, o endpoint.Options, log *slog.Logger) {
	if o.KBS == nil || cfg.EndpointAddr == config.EndpointOff {
		return
	}
	o.Addr = cfg.EndpointAddr
	go func() {
		if err := endpoint.Run(ctx, o); err != nil {
			log.ErrorContext(ctx, "workload endpoint stopped", "error", err)
		}
	}()
}
