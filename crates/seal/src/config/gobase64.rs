//! Base64 exactly as Go's `base64.StdEncoding.DecodeString`, which kube-apiserver uses for key
//! secrets: standard alphabet, `=` padding required, `\r` and `\n` skipped wherever they appear,
//! and non-zero trailing bits accepted (`"YWJjZB=="` is `"abcd"`). A key kube-apiserver accepts,
//! Coffer accepts, and nothing else.

use zeroize::Zeroizing;

use crate::secret::SecretBytes;

/// The input is not Go-StdEncoding base64. Carries no part of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidBase64;

fn value(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// Decodes `text` as Go's `base64.StdEncoding` does. The output is a [`SecretBytes`]; the
/// intermediate copy without line breaks is zeroized.
pub fn decode_std(text: &str) -> Result<SecretBytes, InvalidBase64> {
    let clean: Zeroizing<Vec<u8>> =
        Zeroizing::new(text.bytes().filter(|&b| b != b'\r' && b != b'\n').collect());
    if !clean.len().is_multiple_of(4) {
        return Err(InvalidBase64);
    }
    let mut out = Vec::with_capacity(clean.len() / 4 * 3);
    let quads = clean.len() / 4;
    for (q, quad) in clean.chunks_exact(4).enumerate() {
        let last = q + 1 == quads;
        let a = value(quad[0]);
        let b = value(quad[1]);
        let (Some(a), Some(b)) = (a, b) else {
            zero(&mut out);
            return Err(InvalidBase64);
        };
        match (quad[2], quad[3]) {
            (b'=', b'=') if last => out.push((a << 2) | (b >> 4)),
            (c, b'=') if last && c != b'=' => {
                let Some(c) = value(c) else {
                    zero(&mut out);
                    return Err(InvalidBase64);
                };
                out.push((a << 2) | (b >> 4));
                out.push((b << 4) | (c >> 2));
            }
            (c, d) => {
                let (Some(c), Some(d)) = (value(c), value(d)) else {
                    zero(&mut out);
                    return Err(InvalidBase64);
                };
                out.push((a << 2) | (b >> 4));
                out.push((b << 4) | (c >> 2));
                out.push((c << 6) | d);
            }
        }
    }
    Ok(SecretBytes::new(out))
}

fn zero(buf: &mut Vec<u8>) {
    use zeroize::Zeroize;
    buf.zeroize();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Option<Vec<u8>> {
        decode_std(s).ok().map(|k| k.expose_secret().to_vec())
    }

    #[test]
    fn go_cases() {
        assert_eq!(dec(""), Some(vec![]));
        assert_eq!(dec("YWJjZA=="), Some(b"abcd".to_vec()));
        assert_eq!(
            dec("YWJjZB=="),
            Some(b"abcd".to_vec()),
            "non-zero trailing bits"
        );
        assert_eq!(dec("YWJjZGU="), Some(b"abcde".to_vec()));
        assert_eq!(dec("YWJjZGV="), Some(b"abcde".to_vec()));
        assert_eq!(dec("YWJj"), Some(b"abc".to_vec()));
        assert_eq!(dec("YW\r\nJj\nZA=\n="), Some(b"abcd".to_vec()));
        assert_eq!(dec("\n\r\n"), Some(vec![]));
        assert_eq!(dec("AA=="), Some(vec![0]));
        assert_eq!(dec("AAA="), Some(vec![0, 0]));
        for bad in [
            "YWJjZA",
            "YWJjZA=",
            "YWJjZA===",
            "A===",
            "====",
            "A=",
            "AA=",
            "YQ==YQ==",
            "YQ=a",
            "YW Jj",
            "YWJj\t",
            "YW-j",
            "YW_j",
            "=AAA",
            "A=AA",
            "AA=A",
            "YWJj\0",
        ] {
            assert_eq!(dec(bad), None, "{bad:?} must be rejected");
        }
    }
}
