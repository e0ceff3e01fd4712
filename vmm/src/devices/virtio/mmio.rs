//! The virtio-mmio transport (being written).
