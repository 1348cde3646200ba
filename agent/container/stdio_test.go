package container

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"testing"
	"time"
)

func readUntilEOF(t *testing.T, s *outStream, n int) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []byte
	for {
		b, err := s.read(ctx, n)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		if len(b) == 0 || len(b) > n {
			t.Fatalf("read returned %d bytes for a request of %d", len(b), n)
		}
		out = append(out, b...)
	}
}

func TestOutStreamKeepsOutputAfterWriterCloses(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	s := newOutStream(r)
	want := []byte("written before anyone reads\n")
	w.Write(want)
	w.Close()
	<-s.done
	if got := readUntilEOF(t, s, 5); !bytes.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	if !s.drained() {
		t.Errorf("drained: got false after EOF was read")
	}
}

func TestOutStreamBackpressure(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	s := newOutStream(r)
	total := 3*outBufferLimit + 12345
	payload := bytes.Repeat([]byte("0123456789abcdef"), total/16+1)[:total]
	done := make(chan error, 1)
	go func() {
		_, err := w.Write(payload)
		w.Close()
		done <- err
	}()
	// The writer cannot finish while the buffer is full and unread.
	select {
	case err := <-done:
		t.Fatalf("writer finished (%v) with %d bytes unread: the buffer is unbounded", err, total)
	case <-time.After(200 * time.Millisecond):
	}
	s.mu.Lock()
	buffered := len(s.buf)
	s.mu.Unlock()
	if buffered > outBufferLimit {
		t.Errorf("buffered %d bytes, limit %d", buffered, outBufferLimit)
	}
	got := readUntilEOF(t, s, 1<<20)
	if !bytes.Equal(got, payload) {
		t.Errorf("read %d bytes, want %d identical bytes", len(got), len(payload))
	}
	if err := <-done; err != nil {
		t.Errorf("writer: %v", err)
	}
}

func TestOutStreamReadHonoursContext(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	s := newOutStream(r)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := s.read(ctx, 10); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("read without data: got %v, want deadline exceeded", err)
	}
	s.close()
	r.Close()
	<-s.done
	if _, err := s.read(context.Background(), 10); !errors.Is(err, io.EOF) {
		t.Errorf("read after close: got %v, want EOF", err)
	}
}

func TestClosedStream(t *testing.T) {
	s := closedStream()
	if _, err := s.read(context.Background(), 1); !errors.Is(err, io.EOF) {
		t.Errorf("got %v, want EOF", err)
	}
	if !s.drained() {
		t.Errorf("drained: got false")
	}
}
