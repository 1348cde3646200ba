package network

import (
	"context"
	"fmt"
	"net"

	"github.com/containerd/errdefs"
	"github.com/vishvananda/netlink"

	"github.com/cocoon-containers/cocoon/rpc/agentpb"
)

// AddARPNeighbors adds or replaces neighbour entries (ARP for IPv4, NDP for
// IPv6). A state of 0 means permanent. Every entry is validated and every
// device looked up before the first one is written.
func (n *Network) AddARPNeighbors(ctx context.Context, req *agentpb.AddARPNeighborsRequest) error {
	if req.GetNeighbors() == nil {
		return invalid("add arp neighbors: no neighbors in the request")
	}
	specs, err := parseNeighbors(req)
	if err != nil {
		return err
	}
	h, err := n.begin(ctx)
	if err != nil {
		return err
	}
	defer n.end()

	links, err := retryDump(h.LinkList)
	if err != nil {
		return kernelErr("add arp neighbors: list links", err)
	}
	byName := map[string]int{}
	for _, l := range links {
		byName[l.Attrs().Name] = l.Attrs().Index
	}
	neighs := make([]*netlink.Neigh, 0, len(specs))
	for _, s := range specs {
		index, ok := byName[s.device]
		if !ok {
			return fmt.Errorf("add arp neighbors: neighbor %s: device %s: %w", s.ip, s.device, errdefs.ErrNotFound)
		}
		family := netlink.FAMILY_V4
		if s.ip.Is6() {
			family = netlink.FAMILY_V6
		}
		neighs = append(neighs, &netlink.Neigh{
			LinkIndex:    index,
			Family:       family,
			State:        s.state,
			Flags:        s.flags,
			IP:           net.IP(s.ip.AsSlice()),
			HardwareAddr: s.mac,
		})
	}
	for i, nb := range neighs {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("add arp neighbors: %w", err)
		}
		if err := h.NeighSet(nb); err != nil {
			return kernelErr(fmt.Sprintf("add arp neighbor %s dev %s", specs[i].ip, specs[i].device), err)
		}
	}
	return nil
}
