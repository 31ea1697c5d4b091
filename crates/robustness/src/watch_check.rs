//! Placeholder until the checker lands (the checker helper replaces this file).

use std::fmt;

use crate::history::History;

/// One broken watch guarantee.
#[derive(Debug)]
pub struct Violation {
    /// The guarantee broken.
    pub kind: &'static str,
    /// What was seen.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

/// Checks every watcher of `h`.
pub fn check(h: &History) -> Vec<Violation> {
    let _ = h;
    Vec::new()
}
