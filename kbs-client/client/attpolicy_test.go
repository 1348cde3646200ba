package client_test

import (
	"context"
	"encoding/hex"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-sev-guest/abi"

	"github.com/cocoon-containers/cocoon/attestation/simulated"
	"github.com/cocoon-containers/cocoon/kbs-client/client"
	"github.com/cocoon-containers/cocoon/kbs-client/server"
)

func TestAttestationRejections(t *testing.T) {
	m := measurement()
	attPolicy := "package policy\nimport rego.v1\ndefault allow := false\nallow if input.claims.measurement == \"" + hex.EncodeToString(m[:]) + "\"\n"
	k := newKBS(t, server.Config{AttestationPolicy: attPolicy})
	var otherM [48]byte
	otherM[0] = 7
	debugPolicy := &abi.SnpPolicy{SMT: true, Debug: true}
	for name, tc := range map[string]struct {
		opts       simulated.Options
		typ, words string
	}{
		"measurement outside the attestation policy": {simulated.Options{Measurement: otherM, HostData: hostData()}, "PolicyDeny", "attestation policy"},
		"debug guest": {simulated.Options{Measurement: m, HostData: hostData(), Policy: debugPolicy}, "AttestationFailed", "debug"},
	} {
		p, err := simulated.New(tc.opts)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := client.New(client.Config{URL: k.Srv.URL, Provider: p})
		got, err := c.GetResource(context.Background(), "default/key/1")
		var ke *client.Error
		if got != nil || !errors.As(err, &ke) || ke.Status != http.StatusUnauthorized || !strings.HasSuffix(ke.Type, tc.typ) || !strings.Contains(ke.Detail, tc.words) {
			t.Errorf("%s: %q, %v; want 401 %s mentioning %q", name, got, err, tc.typ, tc.words)
		}
	}
	if got, err := guest(t, k.Srv.URL, m, hostData()).GetResource(context.Background(), "default/key/1"); err != nil || string(got) != secret {
		t.Fatalf("the allowed guest: %q, %v", got, err)
	}
}
