package network

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/containerd/errdefs"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/cocoon-containers/cocoon/rpc/agentpb"
	"github.com/cocoon-containers/cocoon/rpc/typespb"
)

// UpdateInterface configures one link: found by its hardware address, or by
// name when the request has none. It is renamed (swapping names with a link
// that already has the requested name), given the MTU, its addresses are
// replaced by the request's, ARP follows IFF_NOARP in raw_flags, and it is
// brought up. The result is the link as the kernel reports it afterwards.
//
// IPv6 link-local addresses the kernel generated are kept unless the
// request lists link-local addresses of its own: without one the link
// cannot do neighbour discovery.
func (n *Network) UpdateInterface(ctx context.Context, req *agentpb.UpdateInterfaceRequest) (*typespb.Interface, error) {
	spec, err := parseInterface(req)
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
		return nil, kernelErr("update interface "+spec.describe()+": list links", err)
	}
	link, err := findLink(links, spec)
	if err != nil {
		return nil, err
	}
	index := link.Attrs().Index
	what := fmt.Sprintf("update interface %s (index %d)", link.Attrs().Name, index)

	if spec.name != "" && spec.name != link.Attrs().Name {
		if err := rename(h, links, link, spec.name); err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		if link, err = h.LinkByIndex(index); err != nil {
			return nil, kernelErr(what+": read link after rename", err)
		}
	}
	if spec.mtu != 0 && spec.mtu != link.Attrs().MTU {
		if err := h.LinkSetMTU(link, spec.mtu); err != nil {
			return nil, kernelErr(fmt.Sprintf("%s: set mtu %d", what, spec.mtu), err)
		}
	}
	if err := replaceAddresses(h, link, spec.addrs); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if noARP := link.Attrs().RawFlags&unix.IFF_NOARP != 0; noARP != spec.noARP {
		set, op := h.LinkSetARPOn, "turn arp on"
		if spec.noARP {
			set, op = h.LinkSetARPOff, "turn arp off"
		}
		if err := set(link); err != nil {
			return nil, kernelErr(what+": "+op, err)
		}
	}
	if err := h.LinkSetUp(link); err != nil {
		return nil, kernelErr(what+": set up", err)
	}

	if link, err = h.LinkByIndex(index); err != nil {
		return nil, kernelErr(what+": read link", err)
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return h.AddrList(link, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, kernelErr(what+": list addresses", err)
	}
	return describeLink(link, addrs), nil
}

// ListInterfaces reports every link with its addresses.
func (n *Network) ListInterfaces(ctx context.Context, req *agentpb.ListInterfacesRequest) (*agentpb.Interfaces, error) {
	h, err := n.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer n.end()

	links, err := retryDump(h.LinkList)
	if err != nil {
		return nil, kernelErr("list interfaces: list links", err)
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return h.AddrList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, kernelErr("list interfaces: list addresses", err)
	}
	byLink := map[int][]netlink.Addr{}
	for _, a := range addrs {
		byLink[a.LinkIndex] = append(byLink[a.LinkIndex], a)
	}
	out := &agentpb.Interfaces{}
	for _, l := range links {
		out.Interfaces = append(out.Interfaces, describeLink(l, byLink[l.Attrs().Index]))
	}
	return out, nil
}

// findLink picks the link a request targets. Several links can share a
// hardware address (VLANs, for one): the one already carrying the
// requested name wins, then the lowest index.
func findLink(links []netlink.Link, spec *ifaceSpec) (netlink.Link, error) {
	var found netlink.Link
	for _, l := range links {
		a := l.Attrs()
		if spec.mac == nil {
			if a.Name == spec.name {
				return l, nil
			}
			continue
		}
		if !bytes.Equal(a.HardwareAddr, spec.mac) {
			continue
		}
		if spec.name != "" && a.Name == spec.name {
			return l, nil
		}
		if found == nil || a.Index < found.Attrs().Index {
			found = l
		}
	}
	if found == nil {
		return nil, fmt.Errorf("update interface: no interface %s: %w", spec.describe(), errdefs.ErrNotFound)
	}
	return found, nil
}

// rename gives link the name newName; a link that already has that name
// takes link's old name. The kernel renames only links that are down.
func rename(h *netlink.Handle, links []netlink.Link, link netlink.Link, newName string) error {
	oldName := link.Attrs().Name
	var holder netlink.Link
	for _, l := range links {
		if l.Attrs().Name == newName && l.Attrs().Index != link.Attrs().Index {
			holder = l
		}
	}
	if err := h.LinkSetDown(link); err != nil {
		return kernelErr("set down for rename", err)
	}
	if holder == nil {
		return kernelErr(fmt.Sprintf("rename to %s", newName), h.LinkSetName(link, newName))
	}

	holderUp := holder.Attrs().RawFlags&unix.IFF_UP != 0
	tmp := fmt.Sprintf("cctmp%d", holder.Attrs().Index)
	if err := h.LinkSetDown(holder); err != nil {
		return kernelErr(fmt.Sprintf("set down %s, which holds the name %s", newName, newName), err)
	}
	if err := h.LinkSetName(holder, tmp); err != nil {
		return kernelErr(fmt.Sprintf("rename %s, which holds the name, to %s", newName, tmp), err)
	}
	if err := h.LinkSetName(link, newName); err != nil {
		// Give the holder its name back before reporting.
		err = kernelErr(fmt.Sprintf("rename to %s", newName), err)
		if rerr := h.LinkSetName(holder, newName); rerr != nil {
			return errors.Join(err, kernelErr(fmt.Sprintf("rename %s back to %s", tmp, newName), rerr))
		}
		return err
	}
	if err := h.LinkSetName(holder, oldName); err != nil {
		return kernelErr(fmt.Sprintf("rename %s (was %s) to %s", tmp, newName, oldName), err)
	}
	if holderUp {
		if err := h.LinkSetUp(holder); err != nil {
			return kernelErr(fmt.Sprintf("set %s up again", oldName), err)
		}
	}
	return nil
}

// replaceAddresses makes want the link's address list: addresses not in
// want are deleted, missing ones added, ones already there left alone.
func replaceAddresses(h *netlink.Handle, link netlink.Link, want []netip.Prefix) error {
	keepLinkLocal := true
	wanted := map[netip.Prefix]bool{}
	for _, p := range want {
		wanted[p] = true
		if p.Addr().Is6() && p.Addr().IsLinkLocalUnicast() {
			keepLinkLocal = false
		}
	}
	list := func() ([]netlink.Addr, error) { return h.AddrList(link, netlink.FAMILY_ALL) }
	current, err := retryDump(list)
	if err != nil {
		return kernelErr("list addresses", err)
	}
	for _, a := range current {
		p, ok := addrPrefix(a.IPNet)
		if !ok || wanted[p] {
			continue
		}
		if keepLinkLocal && p.Addr().Is6() && p.Addr().IsLinkLocalUnicast() {
			continue
		}
		// Deleting an IPv4 primary address can take its secondaries
		// with it: those are already gone.
		if err := h.AddrDel(link, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return kernelErr("delete address "+p.String(), err)
		}
	}
	// Read again: a deletion may have removed an address we keep.
	if current, err = retryDump(list); err != nil {
		return kernelErr("list addresses", err)
	}
	present := map[netip.Prefix]bool{}
	for _, a := range current {
		if p, ok := addrPrefix(a.IPNet); ok {
			present[p] = true
		}
	}
	for _, p := range want {
		if present[p] {
			continue
		}
		addr := &netlink.Addr{IPNet: &net.IPNet{
			IP:   net.IP(p.Addr().AsSlice()),
			Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
		}}
		if err := h.AddrAdd(link, addr); err != nil {
			return kernelErr("add address "+p.String(), err)
		}
	}
	return nil
}

// addrPrefix converts a kernel address to an address-with-prefix-length.
func addrPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	addr, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	addr = addr.Unmap()
	ones, bits := n.Mask.Size()
	if bits == 0 {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(addr, ones), true
}

// describeLink renders a link and its addresses as a typespb.Interface.
func describeLink(l netlink.Link, addrs []netlink.Addr) *typespb.Interface {
	a := l.Attrs()
	iface := &typespb.Interface{
		Name:     a.Name,
		Mtu:      uint64(a.MTU),
		Type:     l.Type(),
		RawFlags: a.RawFlags,
	}
	if len(a.HardwareAddr) > 0 {
		iface.HwAddr = a.HardwareAddr.String()
	}
	for _, addr := range addrs {
		p, ok := addrPrefix(addr.IPNet)
		if !ok {
			continue
		}
		family := typespb.IPFamily_v4
		if p.Addr().Is6() {
			family = typespb.IPFamily_v6
		}
		iface.IPAddresses = append(iface.IPAddresses, &typespb.IPAddress{
			Family:  family,
			Address: p.Addr().String(),
			Mask:    fmt.Sprint(p.Bits()),
		})
	}
	return iface
}
