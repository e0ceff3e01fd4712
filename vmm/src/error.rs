//! How this crate reports errors: each error type derives `thiserror::Error`, and its message
//! says what failed without repeating its cause, which stays reachable through `source()`. A
//! whole story is the chain, written out by [`Chain`] (in logs and in the `vmm` binary, which
//! adds context with anyhow).

use std::error::Error;
use std::fmt;

/// Displays an error and then each of its causes, `: `-separated. A cause whose text is
/// already shown is skipped: other crates' errors (linux-loader's, for one) often print their
/// source in their own message as well.
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.to_string();
        let mut cause = self.0.source();
        while let Some(error) = cause {
            let text = error.to_string();
            if !shown.contains(&text) {
                shown.push_str(": ");
                shown.push_str(&text);
            }
            cause = error.source();
        }
        f.write_str(&shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("opening the drive")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn every_cause_is_written_once() {
        let error = Outer(std::io::Error::other("no such file"));
        assert_eq!(Chain(&error).to_string(), "opening the drive: no such file");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("loading: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn a_cause_the_message_already_shows_is_not_repeated() {
        let error = Outer(std::io::Error::other(Repeats(std::io::Error::other("bad"))));
        assert_eq!(Chain(&error).to_string(), "opening the drive: loading: bad");
    }
}
