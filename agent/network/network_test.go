package network

import (
	"bytes"
	"errors"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/cocoon-containers/cocoon/rpc/agentpb"
	"github.com/cocoon-containers/cocoon/rpc/typespb"
)

const (
	mac1     = "02:00:00:00:01:01"
	mac1Peer = "02:00:00:00:01:02"
	mac2     = "02:00:00:00:02:01"
	mac2Peer = "02:00:00:00:02:02"
)

func v4(addr, mask string) *typespb.IPAddress {
	return &typespb.IPAddress{Family: typespb.IPFamily_v4, Address: addr, Mask: mask}
}

func v6(addr, mask string) *typespb.IPAddress {
	return &typespb.IPAddress{Family: typespb.IPFamily_v6, Address: addr, Mask: mask}
}

func ifaceReq(iface *typespb.Interface) *agentpb.UpdateInterfaceRequest {
	return &agentpb.UpdateInterfaceRequest{Interface: iface}
}

func routesReq(routes ...*typespb.Route) *agentpb.UpdateRoutesRequest {
	return &agentpb.UpdateRoutesRequest{Routes: &agentpb.Routes{Routes: routes}}
}

func responseAddrs(iface *typespb.Interface) []string {
	var out []string
	for _, a := range iface.GetIPAddresses() {
		if strings.HasPrefix(a.GetAddress(), "fe80:") {
			continue
		}
		out = append(out, a.GetAddress()+"/"+a.GetMask())
	}
	slices.Sort(out)
	return out
}

func TestUpdateInterfaceRenameByMAC(t *testing.T) {
	tn := newTestNet(t)
	before := tn.addVeth("veth-a", mac1, "veth-a-peer", mac1Peer, false)

	got, err := tn.net.UpdateInterface(tn.ctx, ifaceReq(&typespb.Interface{
		Name:        "eth0",
		HwAddr:      strings.ToUpper(mac1),
		Mtu:         1400,
		IPAddresses: []*typespb.IPAddress{v4("10.1.0.2", "24"), v6("fd00:1::2", "64")},
	}))
	if err != nil {
		t.Fatalf("UpdateInterface: %v", err)
	}

	l := tn.link("eth0")
	a := l.Attrs()
	if a.Index != before.Attrs().Index {
		t.Errorf("eth0 has index %d, want %d (the link with mac %s)", a.Index, before.Attrs().Index, mac1)
	}
	if _, err := tn.h.LinkByName("veth-a"); err == nil {
		t.Errorf("a link is still named veth-a")
	}
	if a.MTU != 1400 {
		t.Errorf("mtu = %d, want 1400", a.MTU)
	}
	if a.RawFlags&unix.IFF_UP == 0 {
		t.Errorf("eth0 is not up (flags %#x)", a.RawFlags)
	}
	want := []string{"10.1.0.2/24", "fd00:1::2/64"}
	if got := tn.addrs("eth0", false); !slices.Equal(got, want) {
		t.Errorf("kernel addresses = %v, want %v", got, want)
	}

	if got.GetName() != "eth0" || got.GetMtu() != 1400 || got.GetHwAddr() != mac1 || got.GetType() != "veth" {
		t.Errorf("response = name %q mtu %d hw %q type %q, want eth0 1400 %s veth", got.GetName(), got.GetMtu(), got.GetHwAddr(), got.GetType(), mac1)
	}
	if got.GetRawFlags()&unix.IFF_UP == 0 {
		t.Errorf("response raw_flags %#x lacks IFF_UP", got.GetRawFlags())
	}
	if addrs := responseAddrs(got); !slices.Equal(addrs, want) {
		t.Errorf("response addresses = %v, want %v", addrs, want)
	}
	for _, ip := range got.GetIPAddresses() {
		isV6 := strings.Contains(ip.GetAddress(), ":")
		if (ip.GetFamily() == typespb.IPFamily_v6) != isV6 {
			t.Errorf("response address %s has family %v", ip.GetAddress(), ip.GetFamily())
		}
	}
}

func TestUpdateInterfaceByName(t *testing.T) {
	tn := newTestNet(t)
	tn.addVeth("veth-a", mac1, "veth-a-peer", mac1Peer, false)

	got, err := tn.net.UpdateInterface(tn.ctx, ifaceReq(&typespb.Interface{
		Name:     "veth-a",
		Mtu:      9000,
		RawFlags: unix.IFF_NOARP,
	}))
	if err != nil {
		t.Fatalf("UpdateInterface: %v", err)
	}
	a := tn.link("veth-a").Attrs()
	if a.MTU != 9000 {
		t.Errorf("mtu = %d, want 9000", a.MTU)
	}
	if a.RawFlags&unix.IFF_NOARP == 0 {
		t.Errorf("flags %#x lack IFF_NOARP", a.RawFlags)
	}
	if a.RawFlags&unix.IFF_UP == 0 {
		t.Errorf("flags %#x lack IFF_UP", a.RawFlags)
	}
	if got.GetMtu() != 9000 {
		t.Errorf("response mtu = %d, want 9000", got.GetMtu())
	}

	// Without IFF_NOARP in raw_flags, ARP comes back on.
	if _, err := tn.net.UpdateInterface(tn.ctx, ifaceReq(&typespb.Interface{Name: "veth-a"})); err != nil {
		t.Fatalf("UpdateInterface: %v", err)
	}
	if f := tn.link("veth-a").Attrs().RawFlags; f&unix.IFF_NOARP != 0 {
		t.Errorf("flags %#x still have IFF_NOARP", f)
	}
}

func TestUpdateInterfaceReplacesAddresses(t *testing.T) {
	tn := newTestNet(t)
	tn.addVeth("veth-a", mac1, "veth-a-peer", mac1Peer, true)
	tn.addAddr("veth-a", "10.2.0.5/16")
	tn.addAddr("veth-a", "10.3.0.1/24")
	tn.addAddr("veth-a", "fd00:2::5/64")
	linkLocal := func() []string {
		var ll []string
		for _, a := range tn.addrs("veth-a", true) {
			if strings.HasPrefix(a, "fe80:") {
				ll = append(ll, a)
			}
		}
		return ll
	}
	// The kernel adds the link-local address once the link has carrier,
	// which may come a moment after the link is up.
	llBefore := linkLocal()
	for deadline := time.Now().Add(10 * time.Second); len(llBefore) == 0 && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		llBefore = linkLocal()
	}
	if len(llBefore) == 0 {
		t.Fatal("the kernel gave veth-a no link-local address")
	}

	_, err := tn.net.UpdateInterface(tn.ctx, ifaceReq(&typespb.Interface{
		Name:        "veth-a",
		HwAddr:      mac1,
		IPAddresses: []*typespb.IPAddress{v4("10.3.0.1", "24"), v4("192.168.5.5", "255.255.255.0")},
	}))
	if err != nil {
		t.Fatalf("UpdateInterface: %v", err)
	}
	want := []string{"10.3.0.1/24", "192.168.5.5/24"}
	if got := tn.addrs("veth-a", false); !slices.Equal(got, want) {
		t.Errorf("addresses = %v, want %v", got, want)
	}
	if got := linkLocal(); !slices.Equal(got, llBefore) {
		t.Errorf("ipv6 link-local addresses = %v, want them kept: %v", got, llBefore)
	}

	// An empty list removes every address (but the kernel's link-local).
	if _, err := tn.net.UpdateInterface(tn.ctx, ifaceReq(&typespb.Interface{Name: "veth-a", HwAddr: mac1})); err != nil {
		t.Fatalf("UpdateInterface: %v", err)
	}
	if got := tn.addrs("veth-a", false); len(got) != 0 {
		t.Errorf("addresses = %v, want none", got)
	}
}

func TestUpdateInterfaceSwapsNames(t *testing.T) {
	tn := newTestNet(t)
	first := tn.addVeth("eth0", mac1, "p1", mac1Peer, true)
	second := tn.addVeth("eth1", mac2, "p2", mac2Peer, false)

	// The link with mac2 is to be eth0; the current eth0 becomes eth1.
	if _, err := tn.net.UpdateInterface(tn.ctx, ifaceReq(&typespb.Interface{Name: "eth0", HwAddr: mac2})); err != nil {
		t.Fatalf("UpdateInterface: %v", err)
	}
	if got := tn.link("eth0").Attrs().Index; got != second.Attrs().Index {
		t.Errorf("eth0 is index %d, want %d", got, second.Attrs().Index)
	}
	l := tn.link("eth1")
	if l.Attrs().Index != first.Attrs().Index {
		t.Errorf("eth1 is index %d, want %d", l.Attrs().Index, first.Attrs().Index)
	}
	if l.Attrs().RawFlags&unix.IFF_UP == 0 {
		t.Errorf("the renamed holder is down; it was up")
	}
}

func TestUpdateInterfaceNotFound(t *testing.T) {
	tn := newTestNet(t)
	tn.addVeth("veth-a", mac1, "veth-a-peer", mac1Peer, false)

	for _, iface := range []*typespb.Interface{
		{Name: "eth0", HwAddr: "02:00:00:00:99:99"},
		{Name: "eth9"},
	} {
		_, err := tn.net.UpdateInterface(tn.ctx, ifaceReq(iface))
		if !errdefs.IsNotFound(err) {
			t.Errorf("UpdateInterface(%v) = %v, want a NotFound error", iface, err)
		}
	}
	// The name alone does not stand in for a MAC that is not there.
	_, err := tn.net.UpdateInterface(tn.ctx, ifaceReq(&typespb.Interface{Name: "veth-a", HwAddr: "02:00:00:00:99:99"}))
	if !errdefs.IsNotFound(err) {
		t.Errorf("UpdateInterface(unknown mac, existing name) = %v, want NotFound", err)
	}
}

func TestUpdateInterfaceBadInput(t *testing.T) {
	tn := newTestNet(t)
	tn.addVeth("veth-a", mac1, "veth-a-peer", mac1Peer, false)
	tn.addAddr("veth-a", "10.4.0.1/24")

	many := make([]*typespb.IPAddress, maxAddresses+1)
	for i := range many {
		many[i] = v4(net.IPv4(10, 5, byte(i>>8), byte(i)).String(), "32")
	}
	tests := []struct {
		name  string
		iface *typespb.Interface
	}{
		{"no interface", nil},
		{"no mac no name", &typespb.Interface{Mtu: 1500}},
		{"bad mac", &typespb.Interface{Name: "eth0", HwAddr: "zz:00:00:00:01:01"}},
		{"short mac", &typespb.Interface{Name: "eth0", HwAddr: "02:00:00:00:01"}},
		{"eui64 mac", &typespb.Interface{Name: "eth0", HwAddr: "02:00:00:00:01:01:00:00"}},
		{"dashed mac", &typespb.Interface{Name: "eth0", HwAddr: "02-00-00-00-01-01"}},
		{"zero mac", &typespb.Interface{Name: "eth0", HwAddr: "00:00:00:00:00:00"}},
		{"long name", &typespb.Interface{Name: "abcdefghijklmnop", HwAddr: mac1}},
		{"slash in name", &typespb.Interface{Name: "eth/0", HwAddr: mac1}},
		{"space in name", &typespb.Interface{Name: "eth 0", HwAddr: mac1}},
		{"dotdot name", &typespb.Interface{Name: "..", HwAddr: mac1}},
		{"mtu too small", &typespb.Interface{Name: "veth-a", HwAddr: mac1, Mtu: 67}},
		{"mtu too large", &typespb.Interface{Name: "veth-a", HwAddr: mac1, Mtu: 1 << 20}},
		{"bad address", &typespb.Interface{Name: "veth-a", HwAddr: mac1, IPAddresses: []*typespb.IPAddress{v4("10.1.0.300", "24")}}},
		{"cidr in address", &typespb.Interface{Name: "veth-a", HwAddr: mac1, IPAddresses: []*typespb.IPAddress{v4("10.1.0.1/24", "24")}}},
		{"mask too long", &typespb.Interface{Name: "veth-a", HwAddr: mac1, IPAddresses: []*typespb.IPAddress{v4("10.1.0.1", "33")}}},
		{"negative mask", &typespb.Interface{Name: "veth-a", HwAddr: mac1, IPAddresses: []*typespb.IPAddress{v4("10.1.0.1", "-1")}}},
		{"mask word", &typespb.Interface{Name: "veth-a", HwAddr: mac1, IPAddresses: []*typespb.IPAddress{v4("10.1.0.1", "abc")}}},
		{"gappy netmask", &typespb.Interface{Name: "veth-a", HwAddr: mac1, IPAddresses: []*typespb.IPAddress{v4("10.1.0.1", "255.0.255.0")}}},
		{"empty mask", &typespb.Interface{Name: "veth-a", HwAddr: mac1, IPAddresses: []*typespb.IPAddress{v4("10.1.0.1", "")}}},
		{"v6 mask 129", &typespb.Interface{Name: "veth-a", HwAddr: mac1, IPAddresses: []*typespb.IPAddress{v6("fd00::1", "129")}}},
		{"v6 family v4 address", &typespb.Interface{Name: "veth-a", HwAddr: mac1, IPAddresses: []*typespb.IPAddress{v6("10.1.0.1", "24")}}},
		{"unknown family", &typespb.Interface{Name: "veth-a", HwAddr: mac1, IPAddresses: []*typespb.IPAddress{{Family: 7, Address: "10.1.0.1", Mask: "24"}}}},
		{"zoned address", &typespb.Interface{Name: "veth-a", HwAddr: mac1, IPAddresses: []*typespb.IPAddress{v6("fe80::1%veth-a", "64")}}},
		{"unspecified address", &typespb.Interface{Name: "veth-a", HwAddr: mac1, IPAddresses: []*typespb.IPAddress{v4("0.0.0.0", "0")}}},
		{"multicast address", &typespb.Interface{Name: "veth-a", HwAddr: mac1, IPAddresses: []*typespb.IPAddress{v4("224.0.0.1", "32")}}},
		{"mapped address", &typespb.Interface{Name: "veth-a", HwAddr: mac1, IPAddresses: []*typespb.IPAddress{v6("::ffff:10.1.0.1", "120")}}},
		{"null address", &typespb.Interface{Name: "veth-a", HwAddr: mac1, IPAddresses: []*typespb.IPAddress{nil}}},
		{"duplicate address", &typespb.Interface{Name: "veth-a", HwAddr: mac1, IPAddresses: []*typespb.IPAddress{v4("10.1.0.1", "24"), v4("10.1.0.1", "16")}}},
		{"too many addresses", &typespb.Interface{Name: "veth-a", HwAddr: mac1, IPAddresses: many}},
		{"huge address", &typespb.Interface{Name: "veth-a", HwAddr: mac1, IPAddresses: []*typespb.IPAddress{v4(strings.Repeat("1", 1<<16), "24")}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tn.net.UpdateInterface(tn.ctx, ifaceReq(tt.iface))
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("UpdateInterface = %v, want an InvalidArgument error", err)
			}
			if msg := err.Error(); len(msg) > 400 || msg != strings.ToLower(msg[:1])+msg[1:] {
				t.Errorf("error message %q: want lowercase and short", msg)
			}
			a := tn.link("veth-a").Attrs()
			if a.MTU != 1500 || a.RawFlags&unix.IFF_UP != 0 {
				t.Errorf("veth-a changed: mtu %d flags %#x", a.MTU, a.RawFlags)
			}
			if got, want := tn.addrs("veth-a", false), []string{"10.4.0.1/24"}; !slices.Equal(got, want) {
				t.Errorf("veth-a addresses = %v, want %v", got, want)
			}
		})
	}
}

func TestListInterfaces(t *testing.T) {
	tn := newTestNet(t)
	tn.addVeth("veth-a", mac1, "veth-a-peer", mac1Peer, true)
	tn.addAddr("veth-a", "10.6.0.1/24")
	tn.addAddr("veth-a", "fd00:6::1/64")

	got, err := tn.net.ListInterfaces(tn.ctx, &agentpb.ListInterfacesRequest{})
	if err != nil {
		t.Fatalf("ListInterfaces: %v", err)
	}
	byName := map[string]*typespb.Interface{}
	for _, iface := range got.GetInterfaces() {
		byName[iface.GetName()] = iface
	}
	if len(byName) != 3 {
		t.Errorf("interfaces = %v, want lo, veth-a, veth-a-peer", got.GetInterfaces())
	}
	lo := byName["lo"]
	if lo == nil || lo.GetRawFlags()&unix.IFF_LOOPBACK == 0 || !slices.Contains(responseAddrs(lo), "127.0.0.1/8") {
		t.Errorf("lo = %v, want a loopback with 127.0.0.1/8", lo)
	}
	v := byName["veth-a"]
	if v == nil {
		t.Fatal("no veth-a")
	}
	if v.GetHwAddr() != mac1 || v.GetMtu() != 1500 || v.GetType() != "veth" || v.GetRawFlags()&unix.IFF_UP == 0 {
		t.Errorf("veth-a = %v, want hw %s mtu 1500 type veth up", v, mac1)
	}
	if got, want := responseAddrs(v), []string{"10.6.0.1/24", "fd00:6::1/64"}; !slices.Equal(got, want) {
		t.Errorf("veth-a addresses = %v, want %v", got, want)
	}
	for _, a := range v.GetIPAddresses() {
		if a.GetAddress() == "fd00:6::1" && a.GetFamily() != typespb.IPFamily_v6 {
			t.Errorf("fd00:6::1 has family %v, want v6", a.GetFamily())
		}
	}
}

// setupRouted makes veth-a up with 192.168.7.2/24 (whose subnet route is
// the kernel's) and an extra static route that UpdateRoutes must remove.
func setupRouted(t *testing.T) *testNet {
	tn := newTestNet(t)
	tn.addVeth("veth-a", mac1, "veth-a-peer", mac1Peer, true)
	tn.addAddr("veth-a", "192.168.7.2/24")
	tn.addRoute(&netlink.Route{
		LinkIndex: tn.link("veth-a").Attrs().Index,
		Dst:       mustCIDR(t, "10.50.0.0/16"),
		Gw:        net.ParseIP("192.168.7.1"),
	})
	return tn
}

func TestUpdateRoutesReplacesAndOrders(t *testing.T) {
	tn := setupRouted(t)

	// The gateways 10.9.0.1 and fd00:9::1 are reachable only through link
	// routes later in the list: they must be added first.
	got, err := tn.net.UpdateRoutes(tn.ctx, routesReq(
		&typespb.Route{Dest: "default", Gateway: "10.9.0.1", Device: "veth-a"},
		&typespb.Route{Dest: "172.20.0.0/16", Gateway: "10.9.0.1", Device: "veth-a", Source: "192.168.7.2"},
		&typespb.Route{Dest: "default", Gateway: "fd00:9::1", Device: "veth-a", Family: typespb.IPFamily_v6},
		&typespb.Route{Dest: "10.9.0.0/24", Device: "veth-a", Scope: unix.RT_SCOPE_LINK},
		&typespb.Route{Dest: "fd00:9::/64", Device: "veth-a", Family: typespb.IPFamily_v6},
		// Already there (the kernel's): not an error.
		&typespb.Route{Dest: "192.168.7.0/24", Device: "veth-a", Scope: unix.RT_SCOPE_LINK, Source: "192.168.7.2"},
	))
	if err != nil {
		t.Fatalf("UpdateRoutes: %v", err)
	}
	kernel := tn.routes()
	for _, want := range []string{
		"default via 10.9.0.1 dev veth-a proto boot",
		"172.20.0.0/16 via 10.9.0.1 dev veth-a proto boot",
		"10.9.0.0/24 dev veth-a scope 253 proto boot",
		"192.168.7.0/24 dev veth-a scope 253 proto kernel",
		"default via fd00:9::1 dev veth-a proto boot",
		"fd00:9::/64 dev veth-a proto boot",
		"fe80::/64 dev veth-a proto kernel",
	} {
		if !slices.Contains(kernel, want) {
			t.Errorf("kernel routes lack %q:\n%s", want, strings.Join(kernel, "\n"))
		}
	}
	for _, r := range kernel {
		if strings.HasPrefix(r, "10.50.") {
			t.Errorf("old route %q was kept", r)
		}
	}

	// The response is the table afterwards.
	list, err := tn.net.ListRoutes(tn.ctx, &agentpb.ListRoutesRequest{})
	if err != nil {
		t.Fatalf("ListRoutes: %v", err)
	}
	if len(got.GetRoutes()) != len(list.GetRoutes()) {
		t.Errorf("UpdateRoutes returned %d routes, ListRoutes %d", len(got.GetRoutes()), len(list.GetRoutes()))
	}
	var sawSource bool
	for _, r := range got.GetRoutes() {
		if r.GetDest() == "172.20.0.0/16" {
			sawSource = r.GetSource() == "192.168.7.2" && r.GetGateway() == "10.9.0.1" && r.GetDevice() == "veth-a"
		}
	}
	if !sawSource {
		t.Errorf("response lacks 172.20.0.0/16 via 10.9.0.1 dev veth-a src 192.168.7.2: %v", got.GetRoutes())
	}

	// An empty list leaves only the kept routes.
	if _, err := tn.net.UpdateRoutes(tn.ctx, routesReq()); err != nil {
		t.Fatalf("UpdateRoutes(empty): %v", err)
	}
	for _, r := range tn.routes() {
		if !strings.HasSuffix(r, "proto kernel") {
			t.Errorf("route %q survived an empty update", r)
		}
	}
}

func TestUpdateRoutesRestoresOnFailure(t *testing.T) {
	tn := setupRouted(t)
	before := tn.routes()

	_, err := tn.net.UpdateRoutes(tn.ctx, routesReq(
		&typespb.Route{Dest: "10.60.0.0/16", Device: "veth-a", Scope: unix.RT_SCOPE_LINK},
		&typespb.Route{Dest: "default", Gateway: "10.99.0.1", Device: "veth-a"},
	))
	if err == nil {
		t.Fatal("UpdateRoutes with an unreachable gateway succeeded")
	}
	if !errors.Is(err, unix.ENETUNREACH) || !errdefs.IsFailedPrecondition(err) {
		t.Errorf("error %v: want ENETUNREACH classed FailedPrecondition", err)
	}
	if !strings.Contains(err.Error(), "default via 10.99.0.1 dev veth-a") {
		t.Errorf("error %q does not name the route", err)
	}
	if got := withoutLinkLocal(tn.routes()); !slices.Equal(got, withoutLinkLocal(before)) {
		t.Errorf("routes after the failed update:\n%s\nwant the previous ones:\n%s", strings.Join(got, "\n"), strings.Join(before, "\n"))
	}
}

func TestUpdateRoutesBadInput(t *testing.T) {
	tn := setupRouted(t)
	before := tn.routes()

	tests := []struct {
		name string
		req  *agentpb.UpdateRoutesRequest
		is   func(error) bool
	}{
		{"unknown device", routesReq(&typespb.Route{Dest: "10.0.0.0/8", Device: "eth9"}), errdefs.IsNotFound},
		{"no routes message", &agentpb.UpdateRoutesRequest{}, errdefs.IsInvalidArgument},
		{"null route", routesReq(nil), errdefs.IsInvalidArgument},
		{"no device", routesReq(&typespb.Route{Dest: "10.0.0.0/8"}), errdefs.IsInvalidArgument},
		{"bad device", routesReq(&typespb.Route{Dest: "10.0.0.0/8", Device: "../eth0"}), errdefs.IsInvalidArgument},
		{"prefix too long", routesReq(&typespb.Route{Dest: "10.0.0.0/33", Device: "veth-a"}), errdefs.IsInvalidArgument},
		{"host bits", routesReq(&typespb.Route{Dest: "10.0.0.1/8", Device: "veth-a"}), errdefs.IsInvalidArgument},
		{"garbage dest", routesReq(&typespb.Route{Dest: "ten/8", Device: "veth-a"}), errdefs.IsInvalidArgument},
		{"bad gateway", routesReq(&typespb.Route{Dest: "default", Gateway: "10.0.0", Device: "veth-a"}), errdefs.IsInvalidArgument},
		{"multicast gateway", routesReq(&typespb.Route{Dest: "default", Gateway: "224.0.0.1", Device: "veth-a"}), errdefs.IsInvalidArgument},
		{"mixed families", routesReq(&typespb.Route{Dest: "10.0.0.0/8", Gateway: "fd00::1", Device: "veth-a"}), errdefs.IsInvalidArgument},
		{"family v6 with v4 dest", routesReq(&typespb.Route{Dest: "10.0.0.0/8", Device: "veth-a", Family: typespb.IPFamily_v6}), errdefs.IsInvalidArgument},
		{"unknown family", routesReq(&typespb.Route{Dest: "10.0.0.0/8", Device: "veth-a", Family: 2}), errdefs.IsInvalidArgument},
		{"bad source", routesReq(&typespb.Route{Dest: "10.0.0.0/8", Device: "veth-a", Source: "192.168.7.2/24"}), errdefs.IsInvalidArgument},
		{"scope", routesReq(&typespb.Route{Dest: "10.0.0.0/8", Device: "veth-a", Scope: 256}), errdefs.IsInvalidArgument},
		{"route mtu", routesReq(&typespb.Route{Dest: "10.0.0.0/8", Device: "veth-a", Mtu: 10}), errdefs.IsInvalidArgument},
		{"too many", routesReq(make([]*typespb.Route, maxRoutes+1)...), errdefs.IsInvalidArgument},
		// Valid for us, refused by the kernel: a gateway with link scope.
		{"kernel refuses", routesReq(&typespb.Route{Dest: "10.70.0.0/16", Gateway: "192.168.7.1", Device: "veth-a", Scope: unix.RT_SCOPE_HOST}), errdefs.IsInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A valid route first: nothing may be applied before the bad one
			// is found, or everything must be put back.
			req := tt.req
			if rs := req.GetRoutes(); rs != nil && len(rs.Routes) > 0 && len(rs.Routes) <= maxRoutes {
				rs.Routes = append([]*typespb.Route{{Dest: "10.80.0.0/16", Device: "veth-a", Scope: unix.RT_SCOPE_LINK}}, rs.Routes...)
			}
			_, err := tn.net.UpdateRoutes(tn.ctx, req)
			if !tt.is(err) {
				t.Fatalf("UpdateRoutes = %v, want another class of error", err)
			}
			// The kernel adds fe80::/64 routes when links come up, at a
			// moment of its choosing: not a change to compare.
			if got := withoutLinkLocal(tn.routes()); !slices.Equal(got, withoutLinkLocal(before)) {
				t.Errorf("routes changed:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(before, "\n"))
			}
		})
	}
}

func withoutLinkLocal(routes []string) []string {
	var out []string
	for _, r := range routes {
		if !strings.HasPrefix(r, "fe80::/64 ") {
			out = append(out, r)
		}
	}
	return out
}

func TestListRoutes(t *testing.T) {
	tn := setupRouted(t)
	index := tn.link("veth-a").Attrs().Index
	tn.addRoute(&netlink.Route{LinkIndex: index, Dst: mustCIDR(t, "0.0.0.0/0"), Gw: net.ParseIP("192.168.7.1")})
	tn.addAddr("veth-a", "fd00:7::2/64")
	tn.addRoute(&netlink.Route{LinkIndex: index, Dst: mustCIDR(t, "fd00:77::/48"), Gw: net.ParseIP("fd00:7::1")})

	got, err := tn.net.ListRoutes(tn.ctx, &agentpb.ListRoutesRequest{})
	if err != nil {
		t.Fatalf("ListRoutes: %v", err)
	}
	type key struct {
		dest, gw, dev string
		family        typespb.IPFamily
	}
	seen := map[key]*typespb.Route{}
	for _, r := range got.GetRoutes() {
		seen[key{r.GetDest(), r.GetGateway(), r.GetDevice(), r.GetFamily()}] = r
	}
	for _, want := range []key{
		{"default", "192.168.7.1", "veth-a", typespb.IPFamily_v4},
		{"10.50.0.0/16", "192.168.7.1", "veth-a", typespb.IPFamily_v4},
		{"192.168.7.0/24", "", "veth-a", typespb.IPFamily_v4},
		{"fd00:77::/48", "fd00:7::1", "veth-a", typespb.IPFamily_v6},
		{"fd00:7::/64", "", "veth-a", typespb.IPFamily_v6},
	} {
		if seen[want] == nil {
			t.Errorf("ListRoutes lacks %+v; got %v", want, got.GetRoutes())
		}
	}
	if r := seen[key{"192.168.7.0/24", "", "veth-a", typespb.IPFamily_v4}]; r != nil {
		if r.GetScope() != unix.RT_SCOPE_LINK || r.GetSource() != "192.168.7.2" {
			t.Errorf("subnet route = %v, want scope link src 192.168.7.2", r)
		}
	}
}

func TestAddARPNeighbors(t *testing.T) {
	tn := newTestNet(t)
	tn.addVeth("veth-a", mac1, "veth-a-peer", mac1Peer, true)
	tn.addAddr("veth-a", "192.168.8.2/24")

	err := tn.net.AddARPNeighbors(tn.ctx, &agentpb.AddARPNeighborsRequest{Neighbors: &agentpb.ARPNeighbors{ARPNeighbors: []*typespb.ARPNeighbor{
		{ToIPAddress: v4("192.168.8.1", "32"), Device: "veth-a", Lladdr: mac2},
		{ToIPAddress: v6("fd00:8::1", ""), Device: "veth-a", Lladdr: mac2Peer, State: unix.NUD_PERMANENT},
	}}})
	if err != nil {
		t.Fatalf("AddARPNeighbors: %v", err)
	}
	index := tn.link("veth-a").Attrs().Index
	for _, tc := range []struct {
		family int
		ip     string
		mac    string
	}{
		{netlink.FAMILY_V4, "192.168.8.1", mac2},
		{netlink.FAMILY_V6, "fd00:8::1", mac2Peer},
	} {
		list, err := tn.h.NeighList(index, tc.family)
		if err != nil {
			t.Fatalf("list neighbours: %v", err)
		}
		var found *netlink.Neigh
		for i := range list {
			if list[i].IP.Equal(net.ParseIP(tc.ip)) {
				found = &list[i]
			}
		}
		if found == nil {
			t.Errorf("no neighbour %s in %v", tc.ip, list)
			continue
		}
		if found.State != unix.NUD_PERMANENT {
			t.Errorf("neighbour %s state = %#x, want permanent", tc.ip, found.State)
		}
		if want, _ := net.ParseMAC(tc.mac); !bytes.Equal(found.HardwareAddr, want) {
			t.Errorf("neighbour %s lladdr = %s, want %s", tc.ip, found.HardwareAddr, tc.mac)
		}
	}

	// Replacing an entry is allowed.
	err = tn.net.AddARPNeighbors(tn.ctx, &agentpb.AddARPNeighborsRequest{Neighbors: &agentpb.ARPNeighbors{ARPNeighbors: []*typespb.ARPNeighbor{
		{ToIPAddress: v4("192.168.8.1", "32"), Device: "veth-a", Lladdr: mac1Peer},
	}}})
	if err != nil {
		t.Fatalf("AddARPNeighbors (replace): %v", err)
	}
}

func TestAddARPNeighborsBadInput(t *testing.T) {
	tn := newTestNet(t)
	tn.addVeth("veth-a", mac1, "veth-a-peer", mac1Peer, true)

	req := func(n ...*typespb.ARPNeighbor) *agentpb.AddARPNeighborsRequest {
		return &agentpb.AddARPNeighborsRequest{Neighbors: &agentpb.ARPNeighbors{ARPNeighbors: n}}
	}
	good := &typespb.ARPNeighbor{ToIPAddress: v4("192.168.9.1", "32"), Device: "veth-a", Lladdr: mac2}
	tests := []struct {
		name string
		req  *agentpb.AddARPNeighborsRequest
		is   func(error) bool
	}{
		{"unknown device", req(good, &typespb.ARPNeighbor{ToIPAddress: v4("192.168.9.2", "32"), Device: "eth9", Lladdr: mac2}), errdefs.IsNotFound},
		{"no neighbors message", &agentpb.AddARPNeighborsRequest{}, errdefs.IsInvalidArgument},
		{"null neighbor", req(good, nil), errdefs.IsInvalidArgument},
		{"no ip", req(good, &typespb.ARPNeighbor{Device: "veth-a", Lladdr: mac2}), errdefs.IsInvalidArgument},
		{"bad ip", req(good, &typespb.ARPNeighbor{ToIPAddress: v4("192.168.9", "32"), Device: "veth-a", Lladdr: mac2}), errdefs.IsInvalidArgument},
		{"bad lladdr", req(good, &typespb.ARPNeighbor{ToIPAddress: v4("192.168.9.2", "32"), Device: "veth-a", Lladdr: "02:00:00:00:00"}), errdefs.IsInvalidArgument},
		{"bad device name", req(good, &typespb.ARPNeighbor{ToIPAddress: v4("192.168.9.2", "32"), Device: "veth a", Lladdr: mac2}), errdefs.IsInvalidArgument},
		{"state out of range", req(good, &typespb.ARPNeighbor{ToIPAddress: v4("192.168.9.2", "32"), Device: "veth-a", Lladdr: mac2, State: 0x100}), errdefs.IsInvalidArgument},
		{"negative flags", req(good, &typespb.ARPNeighbor{ToIPAddress: v4("192.168.9.2", "32"), Device: "veth-a", Lladdr: mac2, Flags: -1}), errdefs.IsInvalidArgument},
		{"too many", req(make([]*typespb.ARPNeighbor, maxNeighbors+1)...), errdefs.IsInvalidArgument},
	}
	index := tn.link("veth-a").Attrs().Index
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tn.net.AddARPNeighbors(tn.ctx, tt.req)
			if !tt.is(err) {
				t.Fatalf("AddARPNeighbors = %v, want another class of error", err)
			}
			list, err := tn.h.NeighList(index, netlink.FAMILY_V4)
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range list {
				if n.IP.Equal(net.ParseIP("192.168.9.1")) {
					t.Errorf("the valid neighbour was added before the bad one was found")
				}
			}
		})
	}
}

func TestClosedNetwork(t *testing.T) {
	tn := newTestNet(t)
	tn.net.Close()
	if _, err := tn.net.ListInterfaces(tn.ctx, &agentpb.ListInterfacesRequest{}); !errdefs.IsUnavailable(err) {
		t.Errorf("ListInterfaces after Close = %v, want Unavailable", err)
	}
}
