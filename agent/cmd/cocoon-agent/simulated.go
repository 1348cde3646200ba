//go:build simulated

package main

import (
	"github.com/cocoon-containers/cocoon/attestation"
	"github.com/cocoon-containers/cocoon/attestation/simulated"
)

func init() {
	simulatedProvider = func(h [32]byte, m [48]byte) (attestation.Provider, error) {
		return simulated.New(simulated.Options{HostData: h, Measurement: m})
	}
}
