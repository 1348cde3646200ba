package attestation_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha512"
	"crypto/x509"
	"math/big"
	"testing"

	"github.com/google/go-sev-guest/abi"

	"github.com/cocoon-containers/cocoon/attestation"
)

// BenchmarkVerifyWarm is one full verification with the VCEK served from a
// warm cache; it reports the KDS fetches made during the timed loop.
func BenchmarkVerifyWarm(b *testing.B) {
	e, fake, roots := kdsFixture(b)
	g := &attestation.CachingGetter{Next: fake}
	opts := attestation.VerifyOptions{Getter: g, TrustedRoots: roots}
	if _, err := attestation.Verify(context.Background(), e, opts); err != nil {
		b.Fatal(err)
	}
	before := g.Fetches.Load()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := attestation.Verify(context.Background(), e, opts); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(g.Fetches.Load()-before), "kds-fetches")
}

// BenchmarkPrimitives is the floor: one ECDSA P-384 verification of the
// report and the two certificate signature checks (ASK by ARK, VCEK by ASK).
func BenchmarkPrimitives(b *testing.B) {
	e, fake, roots := kdsFixture(b)
	_ = roots
	report, err := abi.ReportToProto(e.Report)
	if err != nil {
		b.Fatal(err)
	}
	vcekDER, err := fake.Get("https://kdsintf.amd.com/vcek/v1/Milan/" + hexChip(report.ChipId) + "?blSPL=0&teeSPL=0&snpSPL=0&ucodeSPL=0")
	if err != nil {
		b.Fatal(err)
	}
	vcek, err := x509.ParseCertificate(vcekDER)
	if err != nil {
		b.Fatal(err)
	}
	ask, ark := roots["Milan"][0].ProductCerts.Ask, roots["Milan"][0].ProductCerts.Ark
	digest := sha512.Sum384(abi.SignedComponent(e.Report))
	rs, ss := sigRS(e.Report)
	pub := vcek.PublicKey.(*ecdsa.PublicKey)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if !ecdsa.Verify(pub, digest[:], rs, ss) {
			b.Fatal("report signature")
		}
		if err := ask.CheckSignatureFrom(ark); err != nil {
			b.Fatal(err)
		}
		if err := vcek.CheckSignatureFrom(ask); err != nil {
			b.Fatal(err)
		}
	}
}

func hexChip(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

// sigRS reads the little-endian R and S of a report signature.
func sigRS(report []byte) (*big.Int, *big.Int) {
	le := func(b []byte) *big.Int {
		be := make([]byte, len(b))
		for i := range b {
			be[len(b)-1-i] = b[i]
		}
		return new(big.Int).SetBytes(be)
	}
	return le(report[0x2A0 : 0x2A0+72]), le(report[0x2A0+72 : 0x2A0+144])
}
