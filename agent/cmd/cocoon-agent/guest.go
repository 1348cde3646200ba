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

// startWorkloadEndpoint serves the CoCo-compatible endpoint on loopback
// when a KBS is configured (command line, or the initdata's cdh.toml and
// aa.toml) and the guest can attest. Initdata that arrives later through
// SetPolicy does not reconfigure it.
func startWorkloadEndpoint(ctx context.Context, cfg config.Config, id *policy.Initdata, p attestation.Provider, log *slog.Logger) error {
	var files map[string]string
	if id != nil {
		files = id.Data
	}
	o, err := endpoint.FromConfig(cfg.KBSURL, files, p, log)
	if err != nil {
		return err
	}
	if o.KBSURL == "" {
		return nil
	}
	if p == nil {
		log.WarnContext(ctx, "a KBS is configured but attestation is none: no workload endpoint")
		return nil
	}
	go func() {
		if err := endpoint.Run(ctx, o); err != nil {
			log.ErrorContext(ctx, "workload endpoint stopped", "error", err)
		}
	}()
	return nil
}
