package attestation_test

import (
	"io"
	"os"
	"testing"

	"github.com/google/logger"
)

func TestMain(m *testing.M) {
	// go-sev-guest logs warnings (e.g. a table without a VCEK) through
	// google/logger; keep test and benchmark output clean.
	logger.Init("attestation-test", false, false, io.Discard)
	os.Exit(m.Run())
}
