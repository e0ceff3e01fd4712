//! VM configuration (being written).
