package endpoint_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/cocoon-containers/cocoon/attestation/simulated"
	"github.com/cocoon-containers/cocoon/kbs-client/client"
	"github.com/cocoon-containers/cocoon/kbs-client/endpoint"
	"github.com/cocoon-containers/cocoon/kbs-client/kbstest"
	"github.com/cocoon-containers/cocoon/kbs-client/server"
)

// The benchmarks come in pairs measured in the same run: the KBS path and
// the floor, a plain HTTPS GET of the same bytes from a trivial loopback
// HTTPS server. hack/bench/kbs.sh prints their ratios.

// timed runs op b.N times and reports the 50th and 95th percentile
// latencies.
func timed(b *testing.B, op func()) {
	b.Helper()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		op()
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	at := func(q float64) float64 { return float64(lat[int(q*float64(len(lat)-1))].Nanoseconds()) / 1000 }
	b.ReportMetric(at(0.50), "p50-us")
	b.ReportMetric(at(0.95), "p95-us")
}

// floorServer serves the resource bytes over HTTPS and nothing else.
func floorServer(b *testing.B) (*httptest.Server, *http.Client) {
	b.Helper()
	s := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		io.WriteString(w, kbstest.Secret)
	}))
	b.Cleanup(s.Close)
	c := s.Client()
	c.Transport.(*http.Transport).MaxIdleConnsPerHost = 64
	return s, c
}

// fetch GETs url and checks that the answer is the resource.
func fetch(c *http.Client, url string) error {
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || string(body) != kbstest.Secret {
		return fmt.Errorf("GET %s: %d %q %v", url, resp.StatusCode, body, err)
	}
	return nil
}

// BenchmarkRoundTrip is one guest's whole exchange with a TLS KBS on
// loopback: auth, SNP evidence, attest (verification and token), resource
// (policy, JWE) and decryption, over warm connections.
func BenchmarkRoundTrip(b *testing.B) {
	k := kbstest.StartTLS(b, server.Config{Logger: slog.New(slog.DiscardHandler)})
	pin, _ := client.Pins(k.Srv.Certificate())
	tc, err := client.TLSConfig(nil, pin)
	if err != nil {
		b.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tc, MaxIdleConnsPerHost: 16}}
	p, err := simulated.New(simulated.Options{Measurement: kbstest.Measurement(), HostData: kbstest.HostData()})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	before := k.Attests.Load()
	timed(b, func() {
		c, err := client.New(client.Config{URL: k.Srv.URL, Provider: p, HTTPClient: hc})
		if err != nil {
			b.Fatal(err)
		}
		got, err := c.GetResource(ctx, "default/key/1")
		if err != nil || string(got) != kbstest.Secret {
			b.Fatalf("round trip: %q %v", got, err)
		}
	})
	if n := int(k.Attests.Load() - before); n != b.N {
		b.Fatalf("%d attestations for %d round trips", n, b.N)
	}
}

// BenchmarkRoundTripFloor is the floor of BenchmarkRoundTrip: one HTTPS
// GET of the resource over a warm connection.
func BenchmarkRoundTripFloor(b *testing.B) {
	s, c := floorServer(b)
	if err := fetch(c, s.URL); err != nil {
		b.Fatal(err)
	}
	timed(b, func() {
		if err := fetch(c, s.URL); err != nil {
			b.Fatal(err)
		}
	})
}

// parallel runs op from concurrent workers and reports requests per
// second. Workers only record errors (b.Fatal belongs to the benchmark's
// own goroutine).
func parallel(b *testing.B, op func() error) {
	b.Helper()
	b.SetParallelism(4)
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := op(); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "req/s")
}

// BenchmarkEndpointCached is a workload's GET /cdh/resource on the
// endpoint, started with Run as the agent does, once its KBS token is
// cached: one resource request to the TLS KBS and a JWE decryption per
// call, no attestation.
func BenchmarkEndpointCached(b *testing.B) {
	k := kbstest.StartTLS(b, server.Config{Logger: slog.New(slog.DiscardHandler)})
	pin, _ := client.Pins(k.Srv.Certificate())
	p, err := simulated.New(simulated.Options{Measurement: kbstest.Measurement(), HostData: kbstest.HostData()})
	if err != nil {
		b.Fatal(err)
	}
	addr := make(chan net.Addr, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- endpoint.Run(ctx, endpoint.Options{KBSURL: k.Srv.URL, CertPin: pin, Provider: p,
			Logger: slog.New(slog.DiscardHandler), Addr: "127.0.0.1:0", Ready: func(a net.Addr) { addr <- a }})
	}()
	var url string
	select {
	case a := <-addr:
		url = "http://" + a.String() + "/cdh/resource/default/key/1"
	case err := <-done:
		b.Fatal(err)
	}
	b.Cleanup(func() { cancel(); <-done })
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	if err := fetch(c, url); err != nil { // attests once
		b.Fatal(err)
	}
	before := k.Attests.Load()
	parallel(b, func() error { return fetch(c, url) })
	if n := k.Attests.Load() - before; n != 0 {
		b.Fatalf("%d attestations with a cached token", n)
	}
}

// BenchmarkEndpointFloor is the floor of BenchmarkEndpointCached: the same
// concurrent HTTPS GETs of the resource bytes.
func BenchmarkEndpointFloor(b *testing.B) {
	s, c := floorServer(b)
	if err := fetch(c, s.URL); err != nil {
		b.Fatal(err)
	}
	parallel(b, func() error { return fetch(c, s.URL) })
}
