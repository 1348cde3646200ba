package network

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cocoon-containers/cocoon/rpc/agentpb"
	"github.com/cocoon-containers/cocoon/rpc/typespb"
)

// Limits on what the host may ask for in one request.
const (
	// maxNameLen is the longest interface name the kernel takes
	// (IFNAMSIZ less the terminating NUL).
	maxNameLen = unix.IFNAMSIZ - 1
	// minMTU is the smallest MTU IPv4 allows; maxMTU the largest any
	// Linux device reports (loopback).
	minMTU = 68
	maxMTU = 65536
	// Per-request counts.
	maxAddresses = 128
	maxRoutes    = 1024
	maxNeighbors = 1024
	// maxFieldLen bounds the text fields (addresses, masks, MACs) before
	// they are parsed or quoted in an error.
	maxFieldLen = 64
)

// quote renders a host-supplied string for an error message, shortened.
func quote(s string) string {
	if len(s) > maxFieldLen {
		return strconv.Quote(s[:maxFieldLen]) + "..."
	}
	return strconv.Quote(s)
}

// checkName validates an interface name: what the kernel accepts
// (dev_valid_name), further limited to letters, digits, '-', '_' and '.'.
func checkName(name string) error {
	switch {
	case name == "":
		return invalid("interface name is empty")
	case len(name) > maxNameLen:
		return invalid("interface name %s is longer than %d bytes", quote(name), maxNameLen)
	case name == "." || name == "..":
		return invalid("interface name %s is reserved", quote(name))
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.'
		if !ok {
			return invalid("interface name %s contains %q", quote(name), c)
		}
	}
	return nil
}

// parseMAC parses a 6-byte hardware address written with ':' separators.
func parseMAC(what, s string) (net.HardwareAddr, error) {
	if len(s) != len("00:00:00:00:00:00") || strings.Count(s, ":") != 5 {
		return nil, invalid("%s %s is not a mac address (xx:xx:xx:xx:xx:xx)", what, quote(s))
	}
	mac, err := net.ParseMAC(s)
	if err != nil || len(mac) != 6 {
		return nil, invalid("%s %s is not a mac address (xx:xx:xx:xx:xx:xx)", what, quote(s))
	}
	return mac, nil
}

// checkFamily rejects IPFamily values outside the enum.
func checkFamily(what string, f typespb.IPFamily) error {
	if f != typespb.IPFamily_v4 && f != typespb.IPFamily_v6 {
		return invalid("%s: unknown ip family %d", what, int32(f))
	}
	return nil
}

// matchFamily checks addr against the family the host named. IPFamily's
// zero value is v4, so an unset family cannot be told from v4: a v6
// address with family v4 is accepted, the opposite is a contradiction.
func matchFamily(what string, f typespb.IPFamily, addr netip.Addr) error {
	if f == typespb.IPFamily_v6 && addr.Is4() {
		return invalid("%s: ipv4 address %s with family v6", what, addr)
	}
	return nil
}

// parseIP parses a plain unicast IPv4 or IPv6 address: no zone, no
// IPv4-mapped form, not unspecified, not multicast.
func parseIP(what, s string) (netip.Addr, error) {
	if len(s) > maxFieldLen {
		return netip.Addr{}, invalid("%s %s is too long", what, quote(s))
	}
	addr, err := netip.ParseAddr(s)
	switch {
	case err != nil:
		return netip.Addr{}, invalid("%s %s is not an ip address", what, quote(s))
	case addr.Zone() != "":
		return netip.Addr{}, invalid("%s %s has a zone", what, quote(s))
	case addr.Is4In6():
		return netip.Addr{}, invalid("%s %s is an ipv4-mapped ipv6 address", what, quote(s))
	case addr.IsUnspecified():
		return netip.Addr{}, invalid("%s %s is unspecified", what, quote(s))
	case addr.IsMulticast():
		return netip.Addr{}, invalid("%s %s is multicast", what, quote(s))
	}
	return addr, nil
}

// parseMask parses a prefix length ("24") or, for IPv4, a contiguous
// dotted netmask ("255.255.255.0").
func parseMask(s string, addr netip.Addr) (int, error) {
	if len(s) > maxFieldLen {
		return 0, invalid("mask %s is too long", quote(s))
	}
	if s == "" {
		return 0, invalid("mask of %s is empty", addr)
	}
	if n, err := strconv.Atoi(s); err == nil && s[0] != '+' && s[0] != '-' {
		if n < 0 || n > addr.BitLen() {
			return 0, invalid("mask %s out of range for %s", quote(s), addr)
		}
		return n, nil
	}
	if addr.Is4() {
		if m, err := netip.ParseAddr(s); err == nil && m.Is4() {
			b := m.As4()
			ones, bits := net.IPMask(b[:]).Size()
			if bits == 32 {
				return ones, nil
			}
		}
	}
	return 0, invalid("mask %s of %s is not a prefix length", quote(s), addr)
}

// parseIPAddress parses an Interface's address with its mask. The host bits
// stay: the result is the interface address, not the network.
func parseIPAddress(a *typespb.IPAddress) (netip.Prefix, error) {
	if a == nil {
		return netip.Prefix{}, invalid("ip address is null")
	}
	if err := checkFamily("ip address "+quote(a.GetAddress()), a.GetFamily()); err != nil {
		return netip.Prefix{}, err
	}
	addr, err := parseIP("ip address", a.GetAddress())
	if err != nil {
		return netip.Prefix{}, err
	}
	if err := matchFamily("ip address "+addr.String(), a.GetFamily(), addr); err != nil {
		return netip.Prefix{}, err
	}
	bits, err := parseMask(a.GetMask(), addr)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(addr, bits), nil
}

// ifaceSpec is a validated UpdateInterface request.
type ifaceSpec struct {
	mac   net.HardwareAddr // nil: find the link by name
	name  string           // "": keep the current name
	mtu   int              // 0: keep the current MTU
	addrs []netip.Prefix
	noARP bool
}

// describe names the interface a request targets, for error messages.
func (s *ifaceSpec) describe() string {
	if s.mac != nil {
		return "with mac " + s.mac.String()
	}
	return s.name
}

func parseInterface(req *agentpb.UpdateInterfaceRequest) (*ifaceSpec, error) {
	iface := req.GetInterface()
	if iface == nil {
		return nil, invalid("update interface: no interface in the request")
	}
	spec := &ifaceSpec{noARP: iface.GetRawFlags()&unix.IFF_NOARP != 0}
	if name := iface.GetName(); name != "" {
		if err := checkName(name); err != nil {
			return nil, fmt.Errorf("update interface: %w", err)
		}
		spec.name = name
	}
	if hw := iface.GetHwAddr(); hw != "" {
		mac, err := parseMAC("hardware address", hw)
		if err != nil {
			return nil, fmt.Errorf("update interface %s: %w", spec.name, err)
		}
		if bytes.Equal(mac, make(net.HardwareAddr, len(mac))) {
			return nil, invalid("update interface %s: hardware address %s does not identify an interface", spec.name, mac)
		}
		spec.mac = mac
	}
	if spec.mac == nil && spec.name == "" {
		return nil, invalid("update interface: neither a hardware address nor a name")
	}
	if mtu := iface.GetMtu(); mtu != 0 {
		if mtu < minMTU || mtu > maxMTU {
			return nil, invalid("update interface %s: mtu %d outside [%d, %d]", spec.describe(), mtu, minMTU, maxMTU)
		}
		spec.mtu = int(mtu)
	}
	if n := len(iface.GetIPAddresses()); n > maxAddresses {
		return nil, invalid("update interface %s: %d addresses, at most %d", spec.describe(), n, maxAddresses)
	}
	seen := map[netip.Addr]bool{}
	for i, a := range iface.GetIPAddresses() {
		p, err := parseIPAddress(a)
		if err != nil {
			return nil, fmt.Errorf("update interface %s: address %d: %w", spec.describe(), i, err)
		}
		if seen[p.Addr()] {
			return nil, invalid("update interface %s: address %s listed twice", spec.describe(), p.Addr())
		}
		seen[p.Addr()] = true
		spec.addrs = append(spec.addrs, p)
	}
	return spec, nil
}

// routeSpec is one validated route of an UpdateRoutes request.
type routeSpec struct {
	dst    netip.Prefix
	gw     netip.Addr // invalid: no gateway (a link route)
	src    netip.Addr // invalid: no preferred source
	device string
	scope  uint8
	onlink bool
	mtu    int
}

func (r *routeSpec) String() string {
	var b strings.Builder
	if r.dst.Bits() == 0 {
		b.WriteString("default")
		if r.dst.Addr().Is6() {
			b.WriteString(" (ipv6)")
		}
	} else {
		b.WriteString(r.dst.String())
	}
	if r.gw.IsValid() {
		b.WriteString(" via " + r.gw.String())
	}
	b.WriteString(" dev " + r.device)
	return b.String()
}

// parseDest parses a route destination: "" or "default" (a default route,
// family still open), a bare unspecified address (a default route of its
// family), a CIDR without host bits, or a bare address (a host route).
func parseDest(s string) (p netip.Prefix, isDefault bool, err error) {
	if len(s) > maxFieldLen {
		return netip.Prefix{}, false, invalid("dest %s is too long", quote(s))
	}
	if s == "" || s == "default" {
		return netip.Prefix{}, true, nil
	}
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil || p.Addr().Zone() != "" || p.Addr().Is4In6() {
			return netip.Prefix{}, false, invalid("dest %s is not a cidr", quote(s))
		}
		if p != p.Masked() {
			return netip.Prefix{}, false, invalid("dest %s has host bits set (the network is %s)", quote(s), p.Masked())
		}
		return p, false, nil
	}
	addr, err := netip.ParseAddr(s)
	if err != nil || addr.Zone() != "" || addr.Is4In6() {
		return netip.Prefix{}, false, invalid("dest %s is neither default, a cidr nor an address", quote(s))
	}
	if addr.IsUnspecified() {
		return netip.PrefixFrom(addr, 0), false, nil
	}
	return netip.PrefixFrom(addr, addr.BitLen()), false, nil
}

// parseSource parses a preferred source address: bare, or with a prefix
// length of 0 or of the whole address.
func parseSource(s string) (netip.Addr, error) {
	if i := strings.IndexByte(s, '/'); i >= 0 {
		p, err := netip.ParsePrefix(s)
		if err != nil || (p.Bits() != 0 && p.Bits() != p.Addr().BitLen()) {
			return netip.Addr{}, invalid("source %s is not an address", quote(s))
		}
		s = s[:i]
	}
	return parseIP("source", s)
}

func parseRoute(r *typespb.Route) (*routeSpec, error) {
	if r == nil {
		return nil, invalid("route is null")
	}
	if err := checkName(r.GetDevice()); err != nil {
		return nil, fmt.Errorf("device: %w", err)
	}
	spec := &routeSpec{device: r.GetDevice()}
	if err := checkFamily("route", r.GetFamily()); err != nil {
		return nil, err
	}
	dst, isDefault, err := parseDest(r.GetDest())
	if err != nil {
		return nil, err
	}
	var addrs []netip.Addr
	if !isDefault {
		addrs = append(addrs, dst.Addr())
	}
	if g := r.GetGateway(); g != "" {
		if spec.gw, err = parseIP("gateway", g); err != nil {
			return nil, err
		}
		addrs = append(addrs, spec.gw)
	}
	if s := r.GetSource(); s != "" {
		if spec.src, err = parseSource(s); err != nil {
			return nil, err
		}
		addrs = append(addrs, spec.src)
	}
	v6 := r.GetFamily() == typespb.IPFamily_v6
	for i, a := range addrs {
		if err := matchFamily("route", r.GetFamily(), a); err != nil {
			return nil, err
		}
		if i == 0 {
			v6 = a.Is6()
		} else if a.Is6() != v6 {
			return nil, invalid("route mixes ipv4 and ipv6 addresses (%s and %s)", addrs[0], a)
		}
	}
	if isDefault {
		if v6 {
			dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		} else {
			dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		}
	}
	spec.dst = dst
	if sc := r.GetScope(); sc > 255 {
		return nil, invalid("route scope %d is not a scope (0-255)", sc)
	}
	spec.scope = uint8(r.GetScope())
	spec.onlink = r.GetFlags()&unix.RTNH_F_ONLINK != 0
	if mtu := r.GetMtu(); mtu != 0 {
		if mtu < minMTU || mtu > maxMTU {
			return nil, invalid("route mtu %d outside [%d, %d]", mtu, minMTU, maxMTU)
		}
		spec.mtu = int(mtu)
	}
	return spec, nil
}

// parseRoutes validates an UpdateRoutes request and orders it: routes
// without a gateway first, so that the gateways of the others are
// reachable when those are added; the order is otherwise kept.
func parseRoutes(req *agentpb.UpdateRoutesRequest) ([]*routeSpec, error) {
	if req.GetRoutes() == nil {
		return nil, invalid("update routes: no routes in the request")
	}
	list := req.GetRoutes().GetRoutes()
	if len(list) > maxRoutes {
		return nil, invalid("update routes: %d routes, at most %d", len(list), maxRoutes)
	}
	var direct, viaGateway []*routeSpec
	for i, r := range list {
		spec, err := parseRoute(r)
		if err != nil {
			return nil, fmt.Errorf("update routes: route %d: %w", i, err)
		}
		if spec.gw.IsValid() {
			viaGateway = append(viaGateway, spec)
		} else {
			direct = append(direct, spec)
		}
	}
	return append(direct, viaGateway...), nil
}

// neighSpec is one validated ARP neighbour.
type neighSpec struct {
	ip     netip.Addr
	device string
	mac    net.HardwareAddr // nil: no link-layer address
	state  int
	flags  int
}

func parseNeighbor(n *typespb.ARPNeighbor) (*neighSpec, error) {
	if n == nil {
		return nil, invalid("neighbor is null")
	}
	to := n.GetToIPAddress()
	if to == nil || to.GetAddress() == "" {
		return nil, invalid("neighbor has no ip address")
	}
	if err := checkFamily("neighbor "+quote(to.GetAddress()), to.GetFamily()); err != nil {
		return nil, err
	}
	ip, err := parseIP("neighbor address", to.GetAddress())
	if err != nil {
		return nil, err
	}
	if err := matchFamily("neighbor "+ip.String(), to.GetFamily(), ip); err != nil {
		return nil, err
	}
	spec := &neighSpec{ip: ip, device: n.GetDevice()}
	if err := checkName(spec.device); err != nil {
		return nil, fmt.Errorf("neighbor %s: device: %w", ip, err)
	}
	if ll := n.GetLladdr(); ll != "" {
		if spec.mac, err = parseMAC("lladdr", ll); err != nil {
			return nil, fmt.Errorf("neighbor %s: %w", ip, err)
		}
	}
	switch st := n.GetState(); {
	case st == 0:
		spec.state = unix.NUD_PERMANENT
	case st < 0 || st > 0xff:
		return nil, invalid("neighbor %s: state %#x is not a neighbour state", ip, st)
	default:
		spec.state = int(st)
	}
	if f := n.GetFlags(); f < 0 || f > 0xff {
		return nil, invalid("neighbor %s: flags %#x out of range", ip, f)
	}
	spec.flags = int(n.GetFlags())
	return spec, nil
}

func parseNeighbors(req *agentpb.AddARPNeighborsRequest) ([]*neighSpec, error) {
	list := req.GetNeighbors().GetARPNeighbors()
	if len(list) > maxNeighbors {
		return nil, invalid("add arp neighbors: %d neighbors, at most %d", len(list), maxNeighbors)
	}
	specs := make([]*neighSpec, 0, len(list))
	for i, n := range list {
		spec, err := parseNeighbor(n)
		if err != nil {
			return nil, fmt.Errorf("add arp neighbors: neighbor %d: %w", i, err)
		}
		specs = append(specs, spec)
	}
	return specs, nil
}
