package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// qmp is a minimal QEMU Machine Protocol client: one connection, commands
// answered in order, asynchronous events recorded.
type qmp struct {
	conn net.Conn

	mu       sync.Mutex
	nextID   int
	pending  map[string]chan qmpReply
	shutdown string // reason of the last SHUTDOWN event
	closed   chan struct{}
}

type qmpReply struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	Event string `json:"event"`
	Data  struct {
		Reason string `json:"reason"`
	} `json:"data"`
	ID string `json:"id"`
}

// dialQMP connects to the QMP socket (retrying until ctx is done or the
// process died), reads the greeting and leaves command mode negotiated.
func dialQMP(ctx context.Context, path string, died <-chan struct{}) (*qmp, error) {
	var conn net.Conn
	for {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			conn = c
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connect qmp %s: %w (last: %v)", path, ctx.Err(), err)
		case <-died:
			return nil, fmt.Errorf("connect qmp %s: qemu exited", path)
		case <-time.After(20 * time.Millisecond):
		}
	}
	q := &qmp{conn: conn, pending: map[string]chan qmpReply{}, closed: make(chan struct{})}
	r := bufio.NewReaderSize(conn, 64<<10)
	if dl, ok := ctx.Deadline(); ok {
		conn.SetReadDeadline(dl)
	}
	greeting, err := r.ReadBytes('\n')
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("read qmp greeting: %w", err)
	}
	var g struct {
		QMP json.RawMessage `json:"QMP"`
	}
	if err := json.Unmarshal(greeting, &g); err != nil || g.QMP == nil {
		conn.Close()
		return nil, fmt.Errorf("qmp greeting %.80q: not a QMP server", greeting)
	}
	conn.SetReadDeadline(time.Time{})
	go q.readLoop(r)
	if _, err := q.execute(ctx, "qmp_capabilities"); err != nil {
		q.close()
		return nil, err
	}
	return q, nil
}

func (q *qmp) readLoop(r *bufio.Reader) {
	defer func() {
		q.mu.Lock()
		for id, ch := range q.pending {
			close(ch)
			delete(q.pending, id)
		}
		q.mu.Unlock()
		close(q.closed)
	}()
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return
		}
		var m qmpReply
		if json.Unmarshal(line, &m) != nil {
			continue
		}
		q.mu.Lock()
		if m.Event == "SHUTDOWN" {
			q.shutdown = m.Data.Reason
		}
		if ch, ok := q.pending[m.ID]; ok && m.Event == "" {
			ch <- m
			delete(q.pending, m.ID)
		}
		q.mu.Unlock()
	}
}

var errQMPClosed = errors.New("qmp connection closed")

// execute runs one command and returns its result.
func (q *qmp) execute(ctx context.Context, cmd string) (json.RawMessage, error) {
	q.mu.Lock()
	q.nextID++
	id := fmt.Sprintf("c%d", q.nextID)
	ch := make(chan qmpReply, 1)
	q.pending[id] = ch
	q.mu.Unlock()
	b, _ := json.Marshal(map[string]string{"execute": cmd, "id": id})
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		q.mu.Lock()
		delete(q.pending, id)
		q.mu.Unlock()
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	select {
	case m, ok := <-ch:
		if !ok {
			return nil, fmt.Errorf("qmp %s: %w", cmd, errQMPClosed)
		}
		if m.Error != nil {
			return nil, fmt.Errorf("qmp %s: %s: %s", cmd, m.Error.Class, m.Error.Desc)
		}
		return m.Return, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("qmp %s: %w", cmd, ctx.Err())
	}
}

// shutdownReason is the reason of the last SHUTDOWN event, if any.
func (q *qmp) shutdownReason() string {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.shutdown
}

func (q *qmp) close() { q.conn.Close() }
