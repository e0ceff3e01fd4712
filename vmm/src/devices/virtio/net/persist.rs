//! What a network device's snapshot holds: what it was made from. The queues and the features
//! the driver accepted are the transport's (`mmio::TransportState`); frames in flight are not
//! kept (the guest's stack sees them as lost and sends again).
//!
//! The tap is opened again by name on restore, in the restoring process's network namespace:
//! every environment has its own namespace with a tap of the same name, so one snapshot
//! restores into any of them unchanged, guest MAC and address included.

use super::{MacAddr, Net, NetError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    pub iface_id: String,
    pub host_dev_name: String,
    pub guest_mac: Option<MacAddr>,
}

crate::devices::virtio::persist_as_made!(
    Net,
    NetState,
    NetError,
    |net: &Net| NetState {
        iface_id: net.iface_id().to_owned(),
        host_dev_name: net.tap().name().to_owned(),
        guest_mac: net.mac(),
    },
    |state: &NetState| Net::new(&state.iface_id, &state.host_dev_name, state.guest_mac)
);
