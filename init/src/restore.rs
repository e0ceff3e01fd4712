//! Uniqueness after a snapshot restore: every restored guest must diverge from its siblings, so
//! the host's fresh entropy goes into the kernel RNG (`RNDADDENTROPY`, then `RNDRESEEDCRNG` so
//! the next read already uses it) and the wall clock is set to the host's time. PID 1 does this
//! before the runtime's after-restore hooks run.

use crate::sys;
use nix::sys::time::TimeSpec;
use nix::time::{clock_settime, ClockId};
use std::io;
use std::time::Duration;

/// Most entropy taken from one `Restore` (the host sends 64 bytes).
pub const MAX_ENTROPY: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("cannot open /dev/urandom")]
    Open(#[source] io::Error),
    #[error("RNDADDENTROPY failed")]
    AddEntropy(#[source] io::Error),
    #[error("RNDRESEEDCRNG failed")]
    Reseed(#[source] io::Error),
    #[error("{0} bytes of entropy is more than the {MAX_ENTROPY} taken")]
    TooMuch(usize),
    #[error("clock_settime failed")]
    Clock(#[source] io::Error),
}

/// The `struct rand_pool_info` RNDADDENTROPY takes: entropy in bits, buffer size in bytes, then
/// the bytes, in native byte order.
fn rand_pool_info(entropy: &[u8]) -> Result<Vec<u8>, RestoreError> {
    if entropy.len() > MAX_ENTROPY {
        return Err(RestoreError::TooMuch(entropy.len()));
    }
    let too_much = || RestoreError::TooMuch(entropy.len());
    let size = i32::try_from(entropy.len()).map_err(|_| too_much())?;
    let bits = size.checked_mul(8).ok_or_else(too_much)?;
    let mut info = Vec::with_capacity(8 + entropy.len());
    info.extend_from_slice(&bits.to_ne_bytes());
    info.extend_from_slice(&size.to_ne_bytes());
    info.extend_from_slice(entropy);
    Ok(info)
}

/// Mixes `entropy` into the kernel RNG, credited in full, and reseeds the CRNG from it.
pub fn reseed(entropy: &[u8]) -> Result<(), RestoreError> {
    let info = rand_pool_info(entropy)?;
    let urandom = sys::Urandom::open().map_err(RestoreError::Open)?;
    urandom
        .add_entropy(&info)
        .map_err(RestoreError::AddEntropy)?;
    urandom.reseed_crng().map_err(RestoreError::Reseed)
}

/// Sets the wall clock (`CLOCK_REALTIME`) to `since_epoch`.
pub fn set_clock(since_epoch: Duration) -> Result<(), RestoreError> {
    clock_settime(
        ClockId::CLOCK_REALTIME,
        TimeSpec::from_duration(since_epoch),
    )
    .map_err(|e| RestoreError::Clock(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_info_header_counts_bits_and_bytes() {
        let info = rand_pool_info(&[1, 2, 3]).unwrap();
        assert_eq!(&info[..4], &24i32.to_ne_bytes());
        assert_eq!(&info[4..8], &3i32.to_ne_bytes());
        assert_eq!(&info[8..], &[1, 2, 3]);
        assert!(matches!(
            rand_pool_info(&[0; MAX_ENTROPY + 1]),
            Err(RestoreError::TooMuch(_))
        ));
    }

    /// Mixes 64 bytes read from /dev/urandom back into this machine's RNG: harmless, but it
    /// changes the machine and needs root, so it only runs when asked for
    /// (`cargo test -p init -- --ignored reseed`).
    #[test]
    #[ignore]
    fn reseed_takes_entropy_as_root() {
        use std::io::Read;
        let mut entropy = [0u8; 64];
        std::fs::File::open("/dev/urandom")
            .unwrap()
            .read_exact(&mut entropy)
            .unwrap();
        reseed(&entropy).unwrap();
    }
}
