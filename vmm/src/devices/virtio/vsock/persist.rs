//! What a vsock device's snapshot holds: its guest CID and host socket. Its connections do not
//! survive a restore (their host ends belonged to the old process); the restored device tells
//! the guest with a transport reset instead.

use super::{Vsock, VsockError};
use crate::persist::Persist;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockState {
    pub guest_cid: u64,
    pub uds_path: PathBuf,
}

impl Persist<'_> for Vsock {
    type State = VsockState;
    type SaveArgs = ();
    type RestoreArgs = ();
    type SaveError = Infallible;
    type RestoreError = VsockError;

    fn save(&self, (): ()) -> Result<VsockState, Infallible> {
        Ok(VsockState {
            guest_cid: self.guest_cid(),
            uds_path: self.uds_path().to_owned(),
        })
    }

    /// A device for the state's CID, listening on its `uds_path`.
    fn restore((): (), state: &VsockState) -> Result<Vsock, VsockError> {
        Vsock::new(state.guest_cid, &state.uds_path)
    }
}
