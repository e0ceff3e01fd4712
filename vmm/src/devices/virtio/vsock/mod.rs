//! virtio-vsock with a Firecracker-compatible hybrid AF_UNIX backend (being written).
