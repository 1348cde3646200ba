package attestation_test

import (
	"context"
	"testing"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	sevtest "github.com/google/go-sev-guest/testing"
	"github.com/google/go-sev-guest/verify/trust"
	"time"

	"github.com/cocoon-containers/cocoon/attestation"
	"github.com/cocoon-containers/cocoon/attestation/simulated"
)

// kdsFixture returns a report without certificates, a fake AMD KDS that
// serves its VCEK, and roots that trust the fake chain.
func kdsFixture(t testing.TB) (*attestation.Evidence, trust.HTTPSGetter, map[string][]*trust.AMDRootCerts) {
	t.Helper()
	created := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	s, err := sevtest.DefaultTestOnlyCertChain(kds.ProductName(abi.DefaultSevProduct()), created)
	if err != nil {
		t.Fatal(err)
	}
	fake, err := sevtest.FakeKDSFromSigner(s)
	if err != nil {
		t.Fatal(err)
	}
	e := evidence(t, baseOptionsTCB0(), [64]byte{})
	e.CertTable = nil
	certs := &trust.ProductCerts{Ark: s.Ark, Ask: s.Ask, Asvk: s.Asvk}
	roots := map[string][]*trust.AMDRootCerts{"Milan": {{Product: "Milan", ProductLine: "Milan", ProductCerts: certs}}}
	return e, fake, roots
}

func baseOptionsTCB0() (o simulated.Options) {
	o = baseOptions()
	o.ReportedTCB = 0
	return o
}

func TestVCEKFromKDSIsCached(t *testing.T) {
	e, fake, roots := kdsFixture(t)
	dir := t.TempDir()
	g := &attestation.CachingGetter{Dir: dir, Next: fake}
	opts := attestation.VerifyOptions{Getter: g, TrustedRoots: roots}
	if _, err := attestation.Verify(context.Background(), e, opts); err != nil {
		t.Fatalf("first Verify: %v", err)
	}
	cold := g.Fetches.Load()
	if cold == 0 {
		t.Fatal("the VCEK was not fetched from KDS")
	}
	if _, err := attestation.Verify(context.Background(), e, opts); err != nil {
		t.Fatalf("second Verify: %v", err)
	}
	if got := g.Fetches.Load(); got != cold {
		t.Fatalf("warm verification fetched %d more times from KDS", got-cold)
	}
	// A new process with the same cache directory fetches nothing either.
	g2 := &attestation.CachingGetter{Dir: dir, Next: fake}
	if _, err := attestation.Verify(context.Background(), e, attestation.VerifyOptions{Getter: g2, TrustedRoots: roots}); err != nil {
		t.Fatal(err)
	}
	if got := g2.Fetches.Load(); got != 0 {
		t.Fatalf("disk-cached verification fetched %d times", got)
	}
	// No certificates and no getter: a clear failure.
	if _, err := attestation.Verify(context.Background(), e, attestation.VerifyOptions{TrustedRoots: roots}); err == nil {
		t.Fatal("verified a report without any VCEK")
	}
}
