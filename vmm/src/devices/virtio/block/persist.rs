//! What a drive's snapshot holds: what it was made from, so that a restore opens the same
//! backing file again. The data lives in that file, and the queue and transport registers are
//! the transport's (`mmio::TransportState`).

use super::{Block, BlockError};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    pub drive_id: String,
    pub path: PathBuf,
    pub read_only: bool,
}

// The backing file must still be there.
crate::devices::virtio::persist_as_made!(
    Block,
    BlockState,
    BlockError,
    |block: &Block| block.made_from.clone(),
    |state: &BlockState| Block::new(&state.path, state.read_only, &state.drive_id)
);
