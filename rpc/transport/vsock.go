package transport

import (
	"context"
	"fmt"
	"net"

	"github.com/mdlayher/vsock"
)

func listenVsock(a Addr) (net.Listener, error) {
	l, err := vsock.ListenContextID(a.CID, a.Port, nil)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", a, err)
	}
	return l, nil
}

// dialVsock dials AF_VSOCK. Only meaningful on a host with a vsock transport
// to its guests (vhost-vsock); tests never call it.
func dialVsock(ctx context.Context, a Addr) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := vsock.Dial(a.CID, a.Port, nil)
		ch <- result{c, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, fmt.Errorf("dial %s: %w", a, r.err)
		}
		return r.c, nil
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.c != nil {
				r.c.Close()
			}
		}()
		return nil, fmt.Errorf("dial %s: %w", a, ctx.Err())
	}
}
