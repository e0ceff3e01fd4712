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

impl VsockState {
    /// A device for this CID listening on `uds_path`.
    pub fn build(&self) -> Result<Vsock, VsockError> {
        Vsock::new(self.guest_cid, &self.uds_path)
    }
}
