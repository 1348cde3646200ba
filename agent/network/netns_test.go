package network

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// TestMain fails the run if a test left a network namespace open (a
// namespace lives as long as a descriptor or socket refers to it).
func TestMain(m *testing.M) {
	before := countNetnsFDs()
	code := m.Run()
	if after := countNetnsFDs(); code == 0 && after > before {
		fmt.Fprintf(os.Stderr, "network tests leaked %d network namespace descriptors\n", after-before)
		code = 1
	}
	os.Exit(code)
}

// countNetnsFDs counts this process's descriptors that keep a network
// namespace alive: namespace files ("net:[...]") and sockets (each netlink
// socket pins the namespace it was opened in).
func countNetnsFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range ents {
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err == nil && (strings.HasPrefix(target, "net:[") || strings.HasPrefix(target, "socket:[")) {
			n++
		}
	}
	return n
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and links")
	}
}

// testNet is a fresh network namespace with a Network working in it and a
// netlink handle for the test's own reads and setup. Nothing in a test
// touches the namespace the test process runs in.
type testNet struct {
	t   *testing.T
	ns  netns.NsHandle
	h   *netlink.Handle
	net *Network
	ctx context.Context
}

func newTestNet(t *testing.T) *testNet {
	t.Helper()
	requireRoot(t)

	type result struct {
		ns  netns.NsHandle
		err error
	}
	ch := make(chan result)
	go func() {
		// The thread moves into the new namespace and is never unlocked:
		// it ends with this goroutine instead of going back to the pool.
		runtime.LockOSThread()
		ns, err := netns.New()
		ch <- result{ns, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatalf("create network namespace: %v", r.err)
	}
	self, err := netns.Get()
	if err != nil {
		r.ns.Close()
		t.Fatalf("get own network namespace: %v", err)
	}
	same := self.Equal(r.ns)
	self.Close()
	if same {
		r.ns.Close()
		t.Fatal("new network namespace is the test's own namespace")
	}

	tn := &testNet{t: t, ns: r.ns, ctx: context.Background()}
	t.Cleanup(func() {
		if tn.net != nil {
			tn.net.Close()
		}
		if tn.h != nil {
			tn.h.Close()
		}
		tn.ns.Close()
	})
	if tn.h, err = netlink.NewHandleAt(r.ns); err != nil {
		t.Fatalf("netlink handle in test namespace: %v", err)
	}
	if tn.net, err = NewInNamespace(r.ns); err != nil {
		t.Fatalf("NewInNamespace: %v", err)
	}
	lo, err := tn.h.LinkByName("lo")
	if err != nil {
		t.Fatalf("find lo: %v", err)
	}
	if err := tn.h.LinkSetUp(lo); err != nil {
		t.Fatalf("set lo up: %v", err)
	}
	return tn
}

// addVeth creates a veth pair with fixed MACs; the peer is up, the link
// is up when up is set.
func (tn *testNet) addVeth(name, mac, peer, peerMAC string, up bool) netlink.Link {
	tn.t.Helper()
	hw, err := net.ParseMAC(mac)
	if err != nil {
		tn.t.Fatal(err)
	}
	peerHW, err := net.ParseMAC(peerMAC)
	if err != nil {
		tn.t.Fatal(err)
	}
	v := &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: name, HardwareAddr: hw},
		PeerName:         peer,
		PeerHardwareAddr: peerHW,
	}
	if err := tn.h.LinkAdd(v); err != nil {
		tn.t.Fatalf("add veth %s: %v", name, err)
	}
	p := tn.link(peer)
	if err := tn.h.LinkSetUp(p); err != nil {
		tn.t.Fatalf("set %s up: %v", peer, err)
	}
	l := tn.link(name)
	if up {
		if err := tn.h.LinkSetUp(l); err != nil {
			tn.t.Fatalf("set %s up: %v", name, err)
		}
	}
	return tn.link(name)
}

func (tn *testNet) link(name string) netlink.Link {
	tn.t.Helper()
	l, err := tn.h.LinkByName(name)
	if err != nil {
		tn.t.Fatalf("find link %s: %v", name, err)
	}
	return l
}

func (tn *testNet) addAddr(link, cidr string) {
	tn.t.Helper()
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		tn.t.Fatal(err)
	}
	if err := tn.h.AddrAdd(tn.link(link), a); err != nil {
		tn.t.Fatalf("add address %s to %s: %v", cidr, link, err)
	}
}

// addrs lists a link's addresses as "ip/len", sorted; IPv6 link-local
// addresses are left out unless withLinkLocal.
func (tn *testNet) addrs(link string, withLinkLocal bool) []string {
	tn.t.Helper()
	list, err := tn.h.AddrList(tn.link(link), netlink.FAMILY_ALL)
	if err != nil {
		tn.t.Fatalf("list addresses of %s: %v", link, err)
	}
	var out []string
	for _, a := range list {
		if !withLinkLocal && a.IP.To4() == nil && a.IP.IsLinkLocalUnicast() {
			continue
		}
		out = append(out, a.IPNet.String())
	}
	slices.Sort(out)
	return out
}

func (tn *testNet) addRoute(r *netlink.Route) {
	tn.t.Helper()
	if err := tn.h.RouteAdd(r); err != nil {
		tn.t.Fatalf("add route %s: %v", r, err)
	}
}

// routes lists the main table as "dest [via gw] dev name [scope N]
// [proto P]" lines (what ip route prints, roughly), sorted.
func (tn *testNet) routes() []string {
	tn.t.Helper()
	var out []string
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		list, err := tn.h.RouteList(nil, family)
		if err != nil {
			tn.t.Fatalf("list routes: %v", err)
		}
		for _, r := range list {
			dst := "default"
			if r.Dst != nil {
				if ones, _ := r.Dst.Mask.Size(); ones > 0 {
					dst = r.Dst.String()
				}
			}
			s := dst
			if r.Gw != nil {
				s += " via " + r.Gw.String()
			}
			if l, err := tn.h.LinkByIndex(r.LinkIndex); err == nil {
				s += " dev " + l.Attrs().Name
			}
			if r.Scope != netlink.SCOPE_UNIVERSE {
				s += fmt.Sprintf(" scope %d", r.Scope)
			}
			s += " proto " + r.Protocol.String()
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return out
}

func mustCIDR(t *testing.T, s string) *net.IPNet {
	t.Helper()
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
