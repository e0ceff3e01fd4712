//! What a vsock device's snapshot holds: its guest CID and host socket. Its connections do not
//! survive a restore (their host ends belonged to the old process); the restored device tells
//! the guest with a transport reset instead.

use super::{Vsock, VsockError};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockState {
    pub guest_cid: u64,
    pub uds_path: PathBuf,
}

crate::devices::virtio::persist_as_made!(
    Vsock,
    VsockState,
    VsockError,
    |vsock: &Vsock| VsockState {
        guest_cid: vsock.guest_cid(),
        uds_path: vsock.uds_path().to_owned(),
    },
    |state: &VsockState| Vsock::new(state.guest_cid, &state.uds_path)
);
