package client

import (
	"testing"
	"time"
)

func TestBackoffDoublesUpToTheCap(t *testing.T) {
	want := []time.Duration{100, 200, 400, 800, 1000, 1000, 1000}
	for i, w := range want {
		if got := backoff(100*time.Millisecond, time.Second, i); got != w*time.Millisecond {
			t.Errorf("backoff(attempt %d) = %v, want %v", i, got, w*time.Millisecond)
		}
	}
	if got := backoff(time.Second, time.Second, 1<<20); got != time.Second {
		t.Errorf("a huge attempt count: %v", got)
	}
}
