package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"

	"github.com/containerd/errdefs"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/cocoon-containers/cocoon/rpc/agentpb"
	"github.com/cocoon-containers/cocoon/rpc/typespb"
)

// UpdateRoutes replaces the routes of the main table with the request's
// and returns the table as it is afterwards.
//
// Kept, as the Kata agent keeps them: routes the kernel made (protocol
// kernel: subnet routes of addresses, IPv6 link-local), routes through a
// loopback device, and routes without a single output device (multipath,
// blackhole). Routes without a gateway are added first, so that gateways
// are reachable when the others are added. A route the kernel already has
// is not an error. If a route cannot be added, the routes added so far are
// removed and the previous ones put back, as far as the kernel allows.
func (n *Network) UpdateRoutes(ctx context.Context, req *agentpb.UpdateRoutesRequest) (*agentpb.Routes, error) {
	specs, err := parseRoutes(req)
	if err != nil {
		return nil, err
	}
	h, err := n.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer n.end()

	links, err := retryDump(h.LinkList)
	if err != nil {
		return nil, kernelErr("update routes: list links", err)
	}
	byName := map[string]netlink.Link{}
	byIndex := map[int]netlink.Link{}
	for _, l := range links {
		byName[l.Attrs().Name] = l
		byIndex[l.Attrs().Index] = l
	}
	adds := make([]*netlink.Route, 0, len(specs))
	for _, s := range specs {
		l, ok := byName[s.device]
		if !ok {
			return nil, fmt.Errorf("update routes: route %s: device %s: %w", s, s.device, errdefs.ErrNotFound)
		}
		adds = append(adds, s.netlinkRoute(l.Attrs().Index))
	}

	old, err := mainRoutes(h)
	if err != nil {
		return nil, kernelErr("update routes: list routes", err)
	}
	var dels []netlink.Route
	for _, r := range old {
		if !keepRoute(r, byIndex) {
			dels = append(dels, r)
		}
	}
	// Gateway routes go first, the reverse of the order they are added in.
	sort.SliceStable(dels, func(i, j int) bool { return dels[i].Gw != nil && dels[j].Gw == nil })

	var removed []netlink.Route
	for _, r := range dels {
		if err := ctx.Err(); err != nil {
			return nil, withRestore(fmt.Errorf("update routes: %w", err), h, nil, removed)
		}
		if err := h.RouteDel(deletable(r)); err != nil && !errors.Is(err, unix.ESRCH) {
			err = kernelErr("update routes: delete route "+routeString(r, byIndex), err)
			return nil, withRestore(err, h, nil, removed)
		}
		removed = append(removed, r)
	}
	var added []*netlink.Route
	for i, r := range adds {
		if err := ctx.Err(); err != nil {
			return nil, withRestore(fmt.Errorf("update routes: %w", err), h, added, removed)
		}
		if err := h.RouteAdd(r); err != nil {
			if errors.Is(err, unix.EEXIST) {
				continue
			}
			err = kernelErr("update routes: add route "+specs[i].String(), err)
			return nil, withRestore(err, h, added, removed)
		}
		added = append(added, r)
	}

	list, err := listRoutes(h, byIndex)
	if err != nil {
		return nil, fmt.Errorf("update routes: %w", err)
	}
	return list, nil
}

// ListRoutes reports the IPv4 and IPv6 routes of the main table.
func (n *Network) ListRoutes(ctx context.Context, req *agentpb.ListRoutesRequest) (*agentpb.Routes, error) {
	h, err := n.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer n.end()

	links, err := retryDump(h.LinkList)
	if err != nil {
		return nil, kernelErr("list routes: list links", err)
	}
	byIndex := map[int]netlink.Link{}
	for _, l := range links {
		byIndex[l.Attrs().Index] = l
	}
	list, err := listRoutes(h, byIndex)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	return list, nil
}

// netlinkRoute builds the route to add through the link with that index.
func (s *routeSpec) netlinkRoute(index int) *netlink.Route {
	r := &netlink.Route{
		LinkIndex: index,
		Dst: &net.IPNet{
			IP:   net.IP(s.dst.Addr().AsSlice()),
			Mask: net.CIDRMask(s.dst.Bits(), s.dst.Addr().BitLen()),
		},
		Scope:    netlink.Scope(s.scope),
		Protocol: unix.RTPROT_BOOT,
		Table:    unix.RT_TABLE_MAIN,
		Type:     unix.RTN_UNICAST,
		MTU:      s.mtu,
	}
	if s.gw.IsValid() {
		r.Gw = net.IP(s.gw.AsSlice())
	}
	if s.src.IsValid() {
		r.Src = net.IP(s.src.AsSlice())
	}
	if s.onlink {
		r.Flags = int(netlink.FLAG_ONLINK)
	}
	return r
}

// mainRoutes dumps the IPv4 and IPv6 routes of the main table.
func mainRoutes(h *netlink.Handle) ([]netlink.Route, error) {
	var all []netlink.Route
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := retryDump(func() ([]netlink.Route, error) {
			return h.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		})
		if err != nil {
			return nil, err
		}
		all = append(all, routes...)
	}
	return all, nil
}

// keepRoute tells the routes UpdateRoutes leaves in place.
func keepRoute(r netlink.Route, byIndex map[int]netlink.Link) bool {
	if r.Protocol == unix.RTPROT_KERNEL || r.LinkIndex == 0 {
		return true
	}
	l, ok := byIndex[r.LinkIndex]
	return ok && l.Attrs().RawFlags&unix.IFF_LOOPBACK != 0
}

// deletable returns the route in a form RouteDel accepts: a default route
// is dumped without a destination, which RouteDel needs.
func deletable(r netlink.Route) *netlink.Route {
	if r.Dst == nil {
		r.Dst = zeroNet(r.Family)
	}
	return &r
}

// restorable returns a dumped route in a form RouteAdd accepts: flags the
// kernel computes (linkdown, dead) are dropped, onlink is kept.
func restorable(r netlink.Route) *netlink.Route {
	r.Flags &= int(netlink.FLAG_ONLINK)
	if r.Dst == nil {
		r.Dst = zeroNet(r.Family)
	}
	return &r
}

func zeroNet(family int) *net.IPNet {
	if family == netlink.FAMILY_V6 {
		return &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	return &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
}

// withRestore undoes a partial UpdateRoutes (removes added, puts back
// removed) and returns err, with what could not be undone.
func withRestore(err error, h *netlink.Handle, added []*netlink.Route, removed []netlink.Route) error {
	var failed []error
	for i := len(added) - 1; i >= 0; i-- {
		if rerr := h.RouteDel(added[i]); rerr != nil && !errors.Is(rerr, unix.ESRCH) {
			failed = append(failed, rerr)
		}
	}
	// Link routes first again, so that gateways are reachable.
	for pass := 0; pass < 2; pass++ {
		for _, r := range removed {
			if (r.Gw != nil) != (pass == 1) {
				continue
			}
			if rerr := h.RouteAdd(restorable(r)); rerr != nil && !errors.Is(rerr, unix.EEXIST) {
				failed = append(failed, rerr)
			}
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("%w (restoring the previous routes failed: %v)", err, errors.Join(failed...))
	}
	return err
}

// listRoutes renders the main table's routes as typespb.Routes.
func listRoutes(h *netlink.Handle, byIndex map[int]netlink.Link) (*agentpb.Routes, error) {
	routes, err := mainRoutes(h)
	if err != nil {
		return nil, kernelErr("list routes", err)
	}
	out := &agentpb.Routes{}
	for _, r := range routes {
		out.Routes = append(out.Routes, describeRoute(r, byIndex))
	}
	return out, nil
}

func describeRoute(r netlink.Route, byIndex map[int]netlink.Link) *typespb.Route {
	tr := &typespb.Route{
		Dest:  "default",
		Scope: uint32(r.Scope),
		Flags: uint32(r.Flags),
		Mtu:   uint32(r.MTU),
	}
	if r.Family == netlink.FAMILY_V6 {
		tr.Family = typespb.IPFamily_v6
	}
	if r.Dst != nil {
		if ones, _ := r.Dst.Mask.Size(); ones > 0 {
			tr.Dest = r.Dst.String()
		}
	}
	gw, index := r.Gw, r.LinkIndex
	if index == 0 && len(r.MultiPath) > 0 {
		// A multipath route: report its first hop.
		gw, index = r.MultiPath[0].Gw, r.MultiPath[0].LinkIndex
	}
	if gw != nil {
		tr.Gateway = gw.String()
	}
	if l, ok := byIndex[index]; ok {
		tr.Device = l.Attrs().Name
	} else if index != 0 {
		tr.Device = "if" + strconv.Itoa(index)
	}
	if r.Src != nil {
		tr.Source = r.Src.String()
	}
	return tr
}

// routeString renders a dumped route for an error message.
func routeString(r netlink.Route, byIndex map[int]netlink.Link) string {
	tr := describeRoute(r, byIndex)
	s := tr.Dest
	if tr.Gateway != "" {
		s += " via " + tr.Gateway
	}
	if tr.Device != "" {
		s += " dev " + tr.Device
	}
	return s
}
