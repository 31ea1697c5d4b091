//! The on-disk layout of the `records` table: one entry per revision, keyed by the revision
//! (`main` as 8 bytes big-endian, then `sub` as 4 bytes big-endian, so byte order is revision
//! order) and holding either a put (key, create revision, version, lease, sealed value) or a
//! tombstone (key only). The byte layout is documented in `docs/storage.md`.

use crate::Error;

/// A revision: `main` is the keyspace revision, `sub` orders the changes inside one txn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Rev {
    /// The keyspace revision.
    pub main: i64,
    /// Position of the change inside its revision (0, 1, 2, ...).
    pub sub: u32,
}

impl Rev {
    /// A revision with sub-revision `sub`.
    pub fn new(main: i64, sub: u32) -> Self {
        Rev { main, sub }
    }

    /// The 12-byte table key of this revision.
    pub fn to_key(self) -> [u8; 12] {
        let mut out = [0u8; 12];
        out[..8].copy_from_slice(&self.main.to_be_bytes());
        out[8..].copy_from_slice(&self.sub.to_be_bytes());
        out
    }

    /// Parses a 12-byte table key.
    pub fn from_key(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() != 12 {
            return Err(Error::Engine(format!(
                "corrupt record key: expected 12 bytes, found {}",
                bytes.len()
            )));
        }
        let mut main = [0u8; 8];
        main.copy_from_slice(&bytes[..8]);
        let mut sub = [0u8; 4];
        sub.copy_from_slice(&bytes[8..]);
        Ok(Rev {
            main: i64::from_be_bytes(main),
            sub: u32::from_be_bytes(sub),
        })
    }
}

/// Format 1 kinds (no checksum), read only to upgrade a store.
const KIND_PUT_V1: u8 = 1;
const KIND_TOMBSTONE_V1: u8 = 2;
/// Format 2 kinds: a checksum follows the kind byte.
const KIND_PUT: u8 = 3;
const KIND_TOMBSTONE: u8 = 4;
/// kind(1) crc(4): the checksum covers the revision key, the kind and everything after it.
const CHECKED: usize = 1 + 4;
/// create(8) version(8) lease(8) key_len(4)
const PUT_HEADER: usize = 8 + 8 + 8 + 4;
/// key_len(4)
const TOMB_HEADER: usize = 4;

fn checksum(rev: Rev, kind: u8, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&rev.to_key());
    h.update(&[kind]);
    h.update(body);
    h.finalize()
}

/// A decoded record, borrowing from the stored bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record<'a> {
    /// A put of `key` at this revision.
    Put {
        /// The etcd key.
        key: &'a [u8],
        /// Revision that created this generation of the key.
        create_revision: i64,
        /// Version of the key after this put (1 on creation).
        version: i64,
        /// Attached lease (0 = none).
        lease: i64,
        /// The value as the sealer returned it.
        sealed: &'a [u8],
    },
    /// A deletion of `key` at this revision.
    Tombstone {
        /// The etcd key.
        key: &'a [u8],
    },
}

impl<'a> Record<'a> {
    /// The etcd key of the record.
    pub fn key(&self) -> &'a [u8] {
        match self {
            Record::Put { key, .. } | Record::Tombstone { key } => key,
        }
    }

    /// Decodes stored bytes, checking the record's checksum against its bytes and `rev` (a
    /// record copied to another revision fails too). Damage is [`Error::Corrupt`], naming the
    /// revision; never a panic.
    pub fn decode(rev: Rev, bytes: &'a [u8]) -> Result<Self, Error> {
        let corrupt = |what: &str| {
            Error::Corrupt(format!(
                "the record at revision {}.{} is damaged: {what}",
                rev.main, rev.sub
            ))
        };
        if bytes.len() < CHECKED {
            return Err(corrupt("truncated"));
        }
        let kind = bytes[0];
        let body = &bytes[CHECKED..];
        if !matches!(kind, KIND_PUT | KIND_TOMBSTONE) {
            return Err(corrupt(&format!("unknown kind {kind}")));
        }
        if read_u32(&bytes[1..5]) != checksum(rev, kind, body) {
            return Err(corrupt("checksum mismatch"));
        }
        Self::decode_body(kind == KIND_PUT, body).map_err(corrupt)
    }

    /// Decodes a record of storage format 1 (no checksum), to upgrade a store.
    pub(crate) fn decode_v1(rev: Rev, bytes: &'a [u8]) -> Result<Self, Error> {
        let corrupt = |what: &str| {
            Error::Corrupt(format!(
                "the format-1 record at revision {}.{} is damaged: {what}",
                rev.main, rev.sub
            ))
        };
        let (&kind, body) = bytes.split_first().ok_or_else(|| corrupt("empty"))?;
        match kind {
            KIND_PUT_V1 | KIND_TOMBSTONE_V1 => {
                Self::decode_body(kind == KIND_PUT_V1, body).map_err(&corrupt)
            }
            other => Err(corrupt(&format!("unknown kind {other}"))),
        }
    }

    fn decode_body(put: bool, bytes: &'a [u8]) -> Result<Self, &'static str> {
        if put {
            if bytes.len() < PUT_HEADER {
                return Err("truncated header");
            }
            let create_revision = read_i64(&bytes[0..8]);
            let version = read_i64(&bytes[8..16]);
            let lease = read_i64(&bytes[16..24]);
            let key_len = read_u32(&bytes[24..28]) as usize;
            let rest = &bytes[PUT_HEADER..];
            if rest.len() < key_len {
                return Err("truncated key");
            }
            let (key, sealed) = rest.split_at(key_len);
            Ok(Record::Put {
                key,
                create_revision,
                version,
                lease,
                sealed,
            })
        } else {
            if bytes.len() < TOMB_HEADER {
                return Err("truncated header");
            }
            let key_len = read_u32(&bytes[0..4]) as usize;
            let key = &bytes[TOMB_HEADER..];
            if key.len() != key_len {
                return Err("key length mismatch");
            }
            Ok(Record::Tombstone { key })
        }
    }

    /// Encodes the record stored at `rev` into `out` (cleared first), with its checksum.
    pub fn encode_into(&self, rev: Rev, out: &mut Vec<u8>) -> Result<(), Error> {
        out.clear();
        let key = self.key();
        let key_len = u32::try_from(key.len())
            .map_err(|_| Error::Engine(format!("key of {} bytes is too long", key.len())))?;
        let kind = match self {
            Record::Put {
                create_revision,
                version,
                lease,
                sealed,
                ..
            } => {
                out.reserve(CHECKED + PUT_HEADER + key.len() + sealed.len());
                out.extend_from_slice(&[KIND_PUT, 0, 0, 0, 0]);
                out.extend_from_slice(&create_revision.to_be_bytes());
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(&lease.to_be_bytes());
                out.extend_from_slice(&key_len.to_be_bytes());
                out.extend_from_slice(key);
                out.extend_from_slice(sealed);
                KIND_PUT
            }
            Record::Tombstone { .. } => {
                out.reserve(CHECKED + TOMB_HEADER + key.len());
                out.extend_from_slice(&[KIND_TOMBSTONE, 0, 0, 0, 0]);
                out.extend_from_slice(&key_len.to_be_bytes());
                out.extend_from_slice(key);
                KIND_TOMBSTONE
            }
        };
        let crc = checksum(rev, kind, &out[CHECKED..]);
        out[1..5].copy_from_slice(&crc.to_be_bytes());
        Ok(())
    }
}

fn read_i64(b: &[u8]) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    i64::from_be_bytes(a)
}

fn read_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rev_keys_sort_like_revisions() {
        let a = Rev::new(1, 5).to_key();
        let b = Rev::new(2, 0).to_key();
        let c = Rev::new(256, 1).to_key();
        assert!(a < b && b < c);
        assert_eq!(Rev::from_key(&c).unwrap(), Rev::new(256, 1));
        assert!(Rev::from_key(&[1, 2, 3]).is_err());
    }

    #[test]
    fn records_round_trip() {
        let put = Record::Put {
            key: b"/registry/a",
            create_revision: 3,
            version: 7,
            lease: 99,
            sealed: b"k8s:enc:xyz",
        };
        let mut buf = Vec::new();
        put.encode_into(Rev::new(9, 0), &mut buf).unwrap();
        assert_eq!(Record::decode(Rev::new(9, 0), &buf).unwrap(), put);
        let tomb = Record::Tombstone { key: b"k" };
        tomb.encode_into(Rev::new(9, 1), &mut buf).unwrap();
        assert_eq!(Record::decode(Rev::new(9, 1), &buf).unwrap(), tomb);
    }

    #[test]
    fn any_flipped_bit_or_another_revision_is_detected() {
        // Metadata (create revision, version, lease), the key and an identity/aescbc value are
        // not authenticated by the seal: the checksum is what catches their damage.
        let mut buf = Vec::new();
        Record::Put {
            key: b"/registry/secrets/a",
            create_revision: 3,
            version: 7,
            lease: 99,
            sealed: b"plain identity value",
        }
        .encode_into(Rev::new(9, 0), &mut buf)
        .unwrap();
        for i in 0..buf.len() * 8 {
            let mut bad = buf.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(
                matches!(Record::decode(Rev::new(9, 0), &bad), Err(Error::Corrupt(_))),
                "bit {i}"
            );
        }
        assert!(Record::decode(Rev::new(9, 1), &buf).is_err());
        assert!(Record::decode(Rev::new(10, 0), &buf).is_err());
    }

    #[test]
    fn corrupt_records_are_errors_not_panics() {
        for bad in [
            &b""[..],
            &[1u8, 2, 3][..],
            &[2u8, 0, 0, 0, 9, b'a'][..],
            &[7u8][..],
            &[3u8, 0, 0, 0, 0, 1][..],
        ] {
            assert!(Record::decode(Rev::new(1, 0), bad).is_err());
            assert!(Record::decode_v1(Rev::new(1, 0), bad).is_err() || bad.first() == Some(&2));
        }
        // Format 1: a key length beyond the record.
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&[0u8; 24]);
        v1.extend_from_slice(&200u32.to_be_bytes());
        v1.extend_from_slice(b"abc");
        assert!(Record::decode_v1(Rev::new(1, 0), &v1).is_err());
    }
}
