"""Use cases: what the gRPC API and the sidecar do, independent of either transport."""
