//! KMS endpoint parsing: the part of Go's `net/url.Parse` that decides whether
//! kube-apiserver accepts an endpoint (control characters, scheme, authority, escapes, with
//! Go's error texts), and the socket address kube-apiserver would dial
//! (kubernetes/kms `util.ParseEndpoint`).

use super::text::go_quote;

/// What `url.Parse` found, as far as a KMS endpoint needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedEndpoint {
    /// Lower-cased scheme (`unix`).
    pub scheme: String,
    /// Host (after `//`), possibly with a port; empty for `unix:///path`.
    pub host: String,
    /// Unescaped path; empty for `unix://host` and opaque forms like `unix:foo`.
    pub path: String,
    /// Whether it was an opaque URL (`scheme:rest` without `/`).
    pub opaque: bool,
}

impl ParsedEndpoint {
    /// The address kube-apiserver dials: the path, or for `/@name` the abstract name `@name`.
    pub fn socket_address(&self) -> &str {
        match self.path.strip_prefix('/') {
            Some(rest) if rest.starts_with('@') => rest,
            _ => &self.path,
        }
    }
}

/// Parses like Go's `url.Parse`; the error is Go's `*url.Error` text
/// (`parse "unix:///foo\n.socket": net/url: invalid control character in URL`).
pub fn parse_url(raw: &str) -> Result<ParsedEndpoint, String> {
    let (without_frag, frag) = match raw.split_once('#') {
        Some((u, f)) => (u, Some(f)),
        None => (raw, None),
    };
    let parsed =
        parse(without_frag).map_err(|e| format!("parse {}: {e}", go_quote(without_frag)))?;
    if let Some(f) = frag {
        unescape(f).map_err(|e| format!("parse {}: {e}", go_quote(raw)))?;
    }
    Ok(parsed)
}

fn parse(raw: &str) -> Result<ParsedEndpoint, String> {
    if raw.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err("net/url: invalid control character in URL".into());
    }
    let mut out = ParsedEndpoint {
        scheme: String::new(),
        host: String::new(),
        path: String::new(),
        opaque: false,
    };
    if raw == "*" {
        out.path = "*".into();
        return Ok(out);
    }
    let (scheme, rest) = get_scheme(raw)?;
    out.scheme = scheme.to_ascii_lowercase();
    let rest = if rest.ends_with('?') && rest.matches('?').count() == 1 {
        &rest[..rest.len() - 1]
    } else {
        rest.split_once('?').map_or(rest, |(r, _)| r)
    };
    if !rest.starts_with('/') {
        if !out.scheme.is_empty() {
            out.opaque = true;
            return Ok(out);
        }
        let segment = rest.split_once('/').map_or(rest, |(s, _)| s);
        if segment.contains(':') {
            return Err("first path segment in URL cannot contain colon".into());
        }
    }
    let mut rest = rest;
    if (!out.scheme.is_empty() || !rest.starts_with("///")) && rest.starts_with("//") {
        let authority_and_path = &rest[2..];
        let (authority, path) = match authority_and_path.find('/') {
            Some(i) => authority_and_path.split_at(i),
            None => (authority_and_path, ""),
        };
        out.host = parse_authority(authority)?;
        rest = path;
    }
    out.path = unescape(rest)?;
    Ok(out)
}

fn get_scheme(raw: &str) -> Result<(&str, &str), String> {
    for (i, c) in raw.bytes().enumerate() {
        match c {
            b'a'..=b'z' | b'A'..=b'Z' => {}
            b'0'..=b'9' | b'+' | b'-' | b'.' => {
                if i == 0 {
                    return Ok(("", raw));
                }
            }
            b':' => {
                if i == 0 {
                    return Err("missing protocol scheme".into());
                }
                return Ok((&raw[..i], &raw[i + 1..]));
            }
            _ => return Ok(("", raw)),
        }
    }
    Ok(("", raw))
}

fn parse_authority(authority: &str) -> Result<String, String> {
    let (userinfo, host) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    let host = parse_host(host)?;
    if let Some(u) = userinfo {
        let valid = u
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-._:~!$&'()*+,;=%@".contains(&c));
        if !valid {
            return Err("net/url: invalid userinfo".into());
        }
        unescape(u)?;
    }
    Ok(host)
}

fn parse_host(host: &str) -> Result<String, String> {
    if let Some(inner) = host.strip_prefix('[') {
        let Some(close) = inner.find(']') else {
            return Err("missing ']' in host".into());
        };
        let port = &inner[close + 1..];
        if !valid_optional_port(port) {
            return Err(format!("invalid port {} after host", go_quote(port)));
        }
    } else if let Some(i) = host.rfind(':') {
        let port = &host[i..];
        if !valid_optional_port(port) {
            return Err(format!("invalid port {} after host", go_quote(port)));
        }
    }
    unescape(host)
}

fn valid_optional_port(port: &str) -> bool {
    match port.strip_prefix(':') {
        None => port.is_empty(),
        Some(digits) => digits.bytes().all(|c| c.is_ascii_digit()),
    }
}

/// Percent-decoding with Go's error for a bad escape (`invalid URL escape "%zz"`).
fn unescape(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let ok = i + 2 < b.len()
                && b[i + 1].is_ascii_hexdigit()
                && b.get(i + 2).is_some_and(|c| c.is_ascii_hexdigit());
            if !ok {
                let end = (i + 3).min(b.len());
                let esc = String::from_utf8_lossy(&b[i..end]);
                return Err(format!("invalid URL escape {}", go_quote(&esc)));
            }
            let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
            out.push(hex(b[i + 1]) << 4 | hex(b[i + 2]));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_errors() {
        assert_eq!(
            parse_url("unix:///foo\n.socket").unwrap_err(),
            "parse \"unix:///foo\\n.socket\": net/url: invalid control character in URL"
        );
        assert_eq!(
            parse_url("://x").unwrap_err(),
            "parse \"://x\": missing protocol scheme"
        );
        assert_eq!(
            parse_url("unix:///a%zzb").unwrap_err(),
            "parse \"unix:///a%zzb\": invalid URL escape \"%zz\""
        );
        assert_eq!(
            parse_url("unix://[::1/x").unwrap_err(),
            "parse \"unix://[::1/x\": missing ']' in host"
        );
        assert_eq!(
            parse_url("unix://h:ab/x").unwrap_err(),
            "parse \"unix://h:ab/x\": invalid port \":ab\" after host"
        );
        assert_eq!(
            parse_url("1a:b").unwrap_err(),
            "parse \"1a:b\": first path segment in URL cannot contain colon"
        );
    }

    #[test]
    fn unix_forms() {
        let p = parse_url("unix:///var/run/kms.sock").unwrap();
        assert_eq!((p.scheme.as_str(), p.host.as_str()), ("unix", ""));
        assert_eq!(p.socket_address(), "/var/run/kms.sock");
        let p = parse_url("unix:///@kms").unwrap();
        assert_eq!(p.socket_address(), "@kms");
        let p = parse_url("unix://kms.sock").unwrap();
        assert_eq!((p.host.as_str(), p.path.as_str()), ("kms.sock", ""));
        let p = parse_url("UNIX:/x.sock").unwrap();
        assert_eq!((p.scheme.as_str(), p.path.as_str()), ("unix", "/x.sock"));
        let p = parse_url("unix:x.sock").unwrap();
        assert!(p.opaque && p.path.is_empty());
        assert_eq!(parse_url("https://kms").unwrap().scheme, "https");
        assert_eq!(parse_url("/just/a/path").unwrap().scheme, "");
    }
}
