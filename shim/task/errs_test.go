package task

import grpcerr "github.com/containerd/containerd/errdefs"

// errdefsFrom turns a ttrpc-boundary error back into an error class.
func errdefsFrom(err error) error { return grpcerr.FromGRPC(err) }
