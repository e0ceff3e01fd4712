//! What a drive's snapshot holds: what it was made from, so that a restore opens the same
//! backing file again. The data lives in that file, and the queue and transport registers are
//! the transport's (`mmio::TransportState`).

use super::{Block, BlockError};
use crate::persist::Persist;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    pub drive_id: String,
    pub path: PathBuf,
    pub read_only: bool,
}

impl Persist<'_> for Block {
    type State = BlockState;
    type SaveArgs = ();
    type RestoreArgs = ();
    type SaveError = Infallible;
    type RestoreError = BlockError;

    fn save(&self, (): ()) -> Result<BlockState, Infallible> {
        Ok(self.made_from.clone())
    }

    /// The drive `state` describes; its backing file must still be there.
    fn restore((): (), state: &BlockState) -> Result<Block, BlockError> {
        Block::new(&state.path, state.read_only, &state.drive_id)
    }
}
