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

impl NetState {
    /// The device this state describes, on the tap of that name in the current namespace.
    pub fn build(&self) -> Result<Net, NetError> {
        Net::new(&self.iface_id, &self.host_dev_name, self.guest_mac)
    }
}
