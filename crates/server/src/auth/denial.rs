//! The one log line of a denied request: who (the user name, or anonymous), which RPC and
//! which key range, with keys and names printable-escaped and cut to a readable length. A
//! value, password or token is never passed here, so it cannot be logged. Call it once, where
//! the denial is decided, not again where the error is sent.

use std::fmt::Write as _;

/// Key bytes shown at most; longer keys end with `...`.
pub const MAX_LOGGED_KEY_BYTES: usize = 256;

/// `bytes` with everything outside printable ASCII escaped (`\n`, `\xff`), cut after `max`
/// input bytes.
pub fn escape_bytes(bytes: &[u8], max: usize) -> String {
    let mut out = String::with_capacity(bytes.len().min(max) + 8);
    for &b in bytes.iter().take(max) {
        let _ = write!(out, "{}", std::ascii::escape_default(b));
    }
    if bytes.len() > max {
        out.push_str("...");
    }
    out
}

/// How a range is shown: the key alone, `key..` for from-key (`range_end` `\0`), or
/// `[key, range_end)`.
pub fn describe_range(key: &[u8], range_end: &[u8]) -> String {
    let k = escape_bytes(key, MAX_LOGGED_KEY_BYTES);
    match range_end {
        [] => k,
        [0] => format!("[{k}, <end>)"),
        end => format!("[{k}, {})", escape_bytes(end, MAX_LOGGED_KEY_BYTES)),
    }
}

/// How a user is shown: the escaped name, or `<anonymous>`.
pub fn describe_user(user: Option<&str>) -> String {
    match user {
        Some(name) => escape_bytes(name.as_bytes(), MAX_LOGGED_KEY_BYTES),
        None => "<anonymous>".to_owned(),
    }
}

/// Logs a permission denial of `rpc` on `[key, range_end)` for `user` (`None` = anonymous).
pub fn log_denial(user: Option<&str>, rpc: &str, key: &[u8], range_end: &[u8]) {
    tracing::warn!(
        user = %describe_user(user),
        rpc,
        range = %describe_range(key, range_end),
        "permission denied"
    );
    coffer_metrics::auth_denied(rpc);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_printable() {
        assert_eq!(describe_range(b"/a/b", b""), "/a/b");
        assert_eq!(describe_range(b"/a/", b"/a0"), "[/a/, /a0)");
        assert_eq!(describe_range(b"k", b"\0"), "[k, <end>)");
        assert_eq!(describe_range(b"\0", b"\0"), "[\\x00, <end>)");
        assert_eq!(
            describe_range(b"a\nb\x1b[31m\xff\"", b""),
            "a\\nb\\x1b[31m\\xff\\\""
        );
        let long = vec![b'k'; 1000];
        let shown = describe_range(&long, b"");
        assert_eq!(shown.len(), MAX_LOGGED_KEY_BYTES + 3);
        assert!(shown.ends_with("..."));
    }

    #[test]
    fn users_are_printable() {
        assert_eq!(describe_user(None), "<anonymous>");
        assert_eq!(describe_user(Some("alice")), "alice");
        assert_eq!(describe_user(Some("eve\nINFO forged")), "eve\\nINFO forged");
        assert_eq!(describe_user(Some("é")), "\\xc3\\xa9");
    }
}
