package network

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/cocoon-containers/cocoon/rpc/agentpb"
	"github.com/cocoon-containers/cocoon/rpc/typespb"
)

func TestCheckName(t *testing.T) {
	for _, tt := range []struct {
		name string
		ok   bool
	}{
		{"eth0", true},
		{"tap0_kata", true},
		{"veth-a.100", true},
		{"abcdefghijklmno", true},
		{"abcdefghijklmnop", false},
		{"", false},
		{".", false},
		{"..", false},
		{"eth0:1", false},
		{"a/b", false},
		{"a b", false},
		{"eth\x00", false},
		{"éth0", false},
	} {
		err := checkName(tt.name)
		if (err == nil) != tt.ok {
			t.Errorf("checkName(%q) = %v, want ok %v", tt.name, err, tt.ok)
		}
		if err != nil && !errdefs.IsInvalidArgument(err) {
			t.Errorf("checkName(%q) = %v, not InvalidArgument", tt.name, err)
		}
	}
}

func TestParseMask(t *testing.T) {
	v4 := netip.MustParseAddr("10.0.0.1")
	v6 := netip.MustParseAddr("fd00::1")
	for _, tt := range []struct {
		mask string
		addr netip.Addr
		want int // -1: error
	}{
		{"24", v4, 24},
		{"0", v4, 0},
		{"32", v4, 32},
		{"33", v4, -1},
		{"+8", v4, -1},
		{"-0", v4, -1},
		{"255.255.255.0", v4, 24},
		{"255.255.0.255", v4, -1},
		{"255.255.255.0", v6, -1},
		{"64", v6, 64},
		{"128", v6, 128},
		{"129", v6, -1},
		{"", v4, -1},
		{"24 ", v4, -1},
		{"0x18", v4, -1},
	} {
		got, err := parseMask(tt.mask, tt.addr)
		if tt.want < 0 {
			if err == nil {
				t.Errorf("parseMask(%q, %s) = %d, want an error", tt.mask, tt.addr, got)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("parseMask(%q, %s) = %d, %v; want %d", tt.mask, tt.addr, got, err, tt.want)
		}
	}
}

func TestParseRoute(t *testing.T) {
	for _, tt := range []struct {
		route *typespb.Route
		want  string // routeSpec.String(), "" for an error
	}{
		{&typespb.Route{Dest: "default", Gateway: "10.0.0.1", Device: "eth0"}, "default via 10.0.0.1 dev eth0"},
		{&typespb.Route{Dest: "", Gateway: "10.0.0.1", Device: "eth0"}, "default via 10.0.0.1 dev eth0"},
		{&typespb.Route{Dest: "0.0.0.0", Gateway: "10.0.0.1", Device: "eth0"}, "default via 10.0.0.1 dev eth0"},
		{&typespb.Route{Dest: "0.0.0.0/0", Gateway: "10.0.0.1", Device: "eth0"}, "default via 10.0.0.1 dev eth0"},
		{&typespb.Route{Dest: "default", Gateway: "fd00::1", Device: "eth0"}, "default (ipv6) via fd00::1 dev eth0"},
		{&typespb.Route{Dest: "default", Device: "eth0", Family: typespb.IPFamily_v6}, "default (ipv6) dev eth0"},
		{&typespb.Route{Dest: "::", Gateway: "fd00::1", Device: "eth0"}, "default (ipv6) via fd00::1 dev eth0"},
		{&typespb.Route{Dest: "10.1.0.0/16", Device: "eth0"}, "10.1.0.0/16 dev eth0"},
		{&typespb.Route{Dest: "10.1.2.3", Device: "eth0"}, "10.1.2.3/32 dev eth0"},
		{&typespb.Route{Dest: "fd00:1::/48", Device: "eth0", Family: typespb.IPFamily_v6}, "fd00:1::/48 dev eth0"},
		{&typespb.Route{Dest: "224.0.0.0/4", Device: "eth0"}, "224.0.0.0/4 dev eth0"},
		{&typespb.Route{Dest: "10.1.0.0/16", Device: "eth0", Source: "10.1.0.2/32"}, "10.1.0.0/16 dev eth0"},
		{&typespb.Route{Dest: "10.1.0.1/16", Device: "eth0"}, ""},
		{&typespb.Route{Dest: "10.1.0.0/16", Device: "eth0", Source: "10.1.0.2/16"}, ""},
		{&typespb.Route{Dest: "10.1.0.0/16", Device: "eth0", Source: "fd00::1"}, ""},
		{&typespb.Route{Dest: "::ffff:10.0.0.0/104", Device: "eth0"}, ""},
		{&typespb.Route{Dest: "fe80::/64%eth0", Device: "eth0"}, ""},
		{&typespb.Route{Dest: "default", Gateway: "0.0.0.0", Device: "eth0"}, ""},
		{&typespb.Route{Dest: "default", Gateway: "10.0.0.1", Device: ""}, ""},
		{&typespb.Route{Dest: "default", Gateway: "10.0.0.1", Device: "eth0", Scope: 1 << 8}, ""},
		{&typespb.Route{Dest: strings.Repeat("1", 100), Device: "eth0"}, ""},
	} {
		spec, err := parseRoute(tt.route)
		if tt.want == "" {
			if err == nil {
				t.Errorf("parseRoute(%v) = %s, want an error", tt.route, spec)
			} else if !errdefs.IsInvalidArgument(err) {
				t.Errorf("parseRoute(%v) = %v, not InvalidArgument", tt.route, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseRoute(%v): %v", tt.route, err)
			continue
		}
		if got := spec.String(); got != tt.want {
			t.Errorf("parseRoute(%v) = %q, want %q", tt.route, got, tt.want)
		}
	}
}

func TestParseRoutesOrder(t *testing.T) {
	req := &agentpb.UpdateRoutesRequest{Routes: &agentpb.Routes{Routes: []*typespb.Route{
		{Dest: "default", Gateway: "10.0.0.1", Device: "eth0"},
		{Dest: "10.0.0.0/24", Device: "eth0"},
		{Dest: "10.2.0.0/16", Gateway: "10.0.0.2", Device: "eth0"},
		{Dest: "10.1.0.0/24", Device: "eth1"},
	}}}
	specs, err := parseRoutes(req)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range specs {
		got = append(got, s.String())
	}
	want := []string{
		"10.0.0.0/24 dev eth0",
		"10.1.0.0/24 dev eth1",
		"default via 10.0.0.1 dev eth0",
		"10.2.0.0/16 via 10.0.0.2 dev eth0",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("order:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestParseNeighborDefaults(t *testing.T) {
	spec, err := parseNeighbor(&typespb.ARPNeighbor{
		ToIPAddress: &typespb.IPAddress{Address: "fd00::5"},
		Device:      "eth0",
	})
	if err != nil {
		t.Fatal(err)
	}
	if spec.state != 0x80 || spec.mac != nil || !spec.ip.Is6() {
		t.Errorf("spec = %+v, want permanent, no lladdr, ipv6", spec)
	}
}

func FuzzParseRoute(f *testing.F) {
	f.Add("default", "10.0.0.1", "", "eth0", uint32(0), int32(0), uint32(0))
	f.Add("fd00::/64", "", "fd00::2", "eth1", uint32(253), int32(1), uint32(1500))
	f.Add("10.0.0.1", "", "10.0.0.1/0", "a", uint32(254), int32(0), uint32(0))
	f.Fuzz(func(t *testing.T, dest, gw, src, dev string, scope uint32, family int32, mtu uint32) {
		spec, err := parseRoute(&typespb.Route{
			Dest: dest, Gateway: gw, Source: src, Device: dev,
			Scope: scope, Family: typespb.IPFamily(family), Mtu: mtu,
		})
		if err != nil {
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("error %v is not InvalidArgument", err)
			}
			return
		}
		v6 := spec.dst.Addr().Is6()
		if spec.dst != spec.dst.Masked() {
			t.Errorf("dest %s has host bits", spec.dst)
		}
		if spec.gw.IsValid() && spec.gw.Is6() != v6 || spec.src.IsValid() && spec.src.Is6() != v6 {
			t.Errorf("families differ: %s via %s src %s", spec.dst, spec.gw, spec.src)
		}
		if checkName(spec.device) != nil {
			t.Errorf("device %q accepted", spec.device)
		}
	})
}

func FuzzParseInterface(f *testing.F) {
	f.Add("eth0", "02:00:00:00:00:01", uint64(1500), "10.0.0.2", "24", int32(0))
	f.Add("", "02:00:00:00:00:01", uint64(0), "fd00::2", "64", int32(1))
	f.Add("lo", "", uint64(65536), "10.0.0.2", "255.255.255.0", int32(0))
	f.Fuzz(func(t *testing.T, name, hw string, mtu uint64, addr, mask string, family int32) {
		spec, err := parseInterface(&agentpb.UpdateInterfaceRequest{Interface: &typespb.Interface{
			Name: name, HwAddr: hw, Mtu: mtu,
			IPAddresses: []*typespb.IPAddress{{Family: typespb.IPFamily(family), Address: addr, Mask: mask}},
		}})
		if err != nil {
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("error %v is not InvalidArgument", err)
			}
			return
		}
		if spec.mtu != 0 && (spec.mtu < minMTU || spec.mtu > maxMTU) {
			t.Errorf("mtu %d accepted", spec.mtu)
		}
		if spec.mac == nil && spec.name == "" {
			t.Error("neither mac nor name")
		}
		for _, p := range spec.addrs {
			if !p.IsValid() || p.Addr().Zone() != "" || p.Addr().IsUnspecified() {
				t.Errorf("address %s accepted", p)
			}
		}
	})
}
