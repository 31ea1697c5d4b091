//! The on-disk marker scan: values carrying a unique marker are written, then every byte of
//! every file under a directory is searched for the marker in raw, hex and base64 form.
//! Used by the marker test and by the KMS tests.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// A marker no file holds by chance.
pub fn unique_marker(tag: &str) -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!("{tag}{:x}{:x}Zq", t.as_nanos(), std::process::id())
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn base64(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Every encoding of `marker` the scan looks for: raw, hex (both cases), and base64 at each of
/// the three alignments (the stable middle part, so it matches inside a longer encoding).
pub fn forms(marker: &str) -> Vec<Vec<u8>> {
    let m = marker.as_bytes();
    let mut out = vec![
        m.to_vec(),
        hex(m, false).into_bytes(),
        hex(m, true).into_bytes(),
    ];
    for shift in 0..3 {
        let mut padded = vec![b'.'; shift];
        padded.extend_from_slice(m);
        let enc = base64(&padded);
        // Drop the characters that depend on the neighbours (first 4 with padding, last 4).
        let start = if shift == 0 { 0 } else { 4 };
        let middle = &enc[start..enc.len().saturating_sub(4)];
        assert!(middle.len() >= 12, "marker long enough for a base64 probe");
        out.push(middle.as_bytes().to_vec());
    }
    out
}

pub fn hex(data: &[u8], upper: bool) -> String {
    data.iter()
        .map(|b| {
            if upper {
                format!("{b:02X}")
            } else {
                format!("{b:02x}")
            }
        })
        .collect()
}

/// (file, form index) of every hit under `dir`, plus the number of files and bytes scanned.
pub fn scan(dir: &Path, forms: &[Vec<u8>]) -> (Vec<(String, usize)>, usize, u64) {
    let mut hits = Vec::new();
    let mut files = 0;
    let mut bytes = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("marker scan: list a directory") {
            let entry = entry.expect("marker scan: read a directory entry");
            let path = entry.path();
            if entry
                .file_type()
                .expect("marker scan: a file type")
                .is_dir()
            {
                stack.push(path);
                continue;
            }
            let data = std::fs::read(&path).expect("marker scan: read a file");
            files += 1;
            bytes += data.len() as u64;
            for (i, f) in forms.iter().enumerate() {
                if data.windows(f.len()).any(|w| w == f.as_slice()) {
                    hits.push((path.display().to_string(), i));
                }
            }
        }
    }
    (hits, files, bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn probes_are_right() {
        assert_eq!(base64(b"Man"), "TWFu");
        assert_eq!(base64(b"Ma"), "TWE");
        assert_eq!(hex(b"\x01\xab", false), "01ab");
        // Each base64 probe really occurs in the encoding of a text containing the marker.
        let m = "CofferPlainMarker1234abcdZq";
        for lead in ["", "x", "xy", "xyz"] {
            let enc = base64(format!("{lead}{m}tail").as_bytes());
            assert!(
                forms(m)[3..]
                    .iter()
                    .any(|p| enc.contains(std::str::from_utf8(p).unwrap())),
                "{lead:?}"
            );
        }
    }
}
