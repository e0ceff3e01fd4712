//! What a network device's snapshot holds: what it was made from. The queues and the features
//! the driver accepted are the transport's (`mmio::TransportState`); frames in flight are not
//! kept (the guest's stack sees them as lost and sends again).
//!
//! The tap is opened again by name on restore, in the restoring process's network namespace:
//! every environment has its own namespace with a tap of the same name, so one snapshot
//! restores into any of them unchanged, guest MAC and address included.

use super::{MacAddr, Net, NetError};
use crate::persist::Persist;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    pub iface_id: String,
    pub host_dev_name: String,
    pub guest_mac: Option<MacAddr>,
}

impl Persist<'_> for Net {
    type State = NetState;
    type SaveArgs = ();
    type RestoreArgs = ();
    type SaveError = Infallible;
    type RestoreError = NetError;

    fn save(&self, (): ()) -> Result<NetState, Infallible> {
        Ok(NetState {
            iface_id: self.iface_id().to_owned(),
            host_dev_name: self.tap().name().to_owned(),
            guest_mac: self.mac(),
        })
    }

    /// The device `state` describes, on the tap of that name in the current namespace.
    fn restore((): (), state: &NetState) -> Result<Net, NetError> {
        Net::new(&state.iface_id, &state.host_dev_name, state.guest_mac)
    }
}
