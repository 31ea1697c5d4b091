//! The store's typed [`Meta`]: identities, revision counters, compaction marks, the log
//! checkpoint, alarms and per-key write counts, stored as one checksummed row and written in
//! every commit, so they always change atomically with the data they describe.

use coffer_proto::AlarmMember;

use crate::Error;

/// Encoding version of the row.
const VERSION: u8 = 2;

/// Everything the store keeps beside its records and leases.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Meta {
    /// Random, nonzero, made at first start.
    pub cluster_id: u64,
    /// Random, nonzero, made at first start.
    pub member_id: u64,
    /// The keyspace revision (survives compaction of the newest records, etcd #17780).
    pub current_revision: i64,
    /// Written in the commit that accepts a Compact, before any record is removed.
    pub scheduled_compact: Option<i64>,
    /// Written in the commit that removes the compaction's last record.
    pub finished_compact: Option<i64>,
    /// The last log entry a durable engine commit covers (the engine stamps it).
    pub wal_checkpoint_seq: u64,
    /// Active alarms (etcd's `alarm` bucket).
    pub alarms: Vec<AlarmMember>,
    /// Writes sealed under each counted key (aesgcm's nonce budget), by the seal's counter id.
    pub write_counts: Vec<(String, u64)>,
}

impl Meta {
    /// The row's bytes: fields big-endian, then a crc32 of everything before it.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.alarms.len() * 12);
        out.push(VERSION);
        out.extend_from_slice(&self.cluster_id.to_be_bytes());
        out.extend_from_slice(&self.member_id.to_be_bytes());
        out.extend_from_slice(&self.current_revision.to_be_bytes());
        for v in [self.scheduled_compact, self.finished_compact] {
            out.push(u8::from(v.is_some()));
            out.extend_from_slice(&v.unwrap_or(0).to_be_bytes());
        }
        out.extend_from_slice(&self.wal_checkpoint_seq.to_be_bytes());
        out.extend_from_slice(&(self.alarms.len() as u32).to_be_bytes());
        out.extend_from_slice(&crate::alarm::encode(&self.alarms));
        out.extend_from_slice(&(self.write_counts.len() as u32).to_be_bytes());
        for (id, n) in &self.write_counts {
            let id = &id.as_bytes()[..id.len().min(u16::MAX as usize)];
            out.extend_from_slice(&(id.len() as u16).to_be_bytes());
            out.extend_from_slice(id);
            out.extend_from_slice(&n.to_be_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// Decodes and checks the row; damage is [`Error::Corrupt`] naming `file`.
    pub(crate) fn decode(bytes: &[u8], file: &str) -> Result<Meta, Error> {
        let corrupt = |what: &str| {
            Error::Corrupt(format!(
                "{file}: the store's meta row is damaged ({what}); restore the data directory \
                 from a backup or a snapshot"
            ))
        };
        if bytes.len() < 5 {
            return Err(corrupt("truncated"));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32fast::hash(body) != u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]) {
            return Err(corrupt("checksum mismatch"));
        }
        let mut r = Reader(body);
        let version = r.u8().ok_or_else(|| corrupt("truncated"))?;
        if version != VERSION {
            return Err(corrupt(&format!("unknown version {version}")));
        }
        Self::fields(&mut r).ok_or_else(|| corrupt("malformed"))
    }

    fn fields(r: &mut Reader<'_>) -> Option<Meta> {
        let cluster_id = r.u64()?;
        let member_id = r.u64()?;
        let current_revision = r.u64()? as i64;
        let mut opt = || -> Option<Option<i64>> {
            let set = r.u8()?;
            let v = r.u64()? as i64;
            Some((set == 1).then_some(v))
        };
        let scheduled_compact = opt()?;
        let finished_compact = opt()?;
        let wal_checkpoint_seq = r.u64()?;
        let n = r.u32()? as usize;
        let alarms = crate::alarm::decode(r.take(n.checked_mul(12)?)?).ok()?;
        let n = r.u32()? as usize;
        let mut write_counts = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            let len = r.u16()? as usize;
            let id = String::from_utf8(r.take(len)?.to_vec()).ok()?;
            write_counts.push((id, r.u64()?));
        }
        if !r.0.is_empty() {
            return None;
        }
        Some(Meta {
            cluster_id,
            member_id,
            current_revision,
            scheduled_compact,
            finished_compact,
            wal_checkpoint_seq,
            alarms,
            write_counts,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> Meta {
        Meta {
            cluster_id: 7,
            member_id: 9,
            current_revision: 1234,
            scheduled_compact: Some(1000),
            finished_compact: None,
            wal_checkpoint_seq: 55,
            alarms: vec![AlarmMember {
                member_id: 9,
                alarm: 1,
            }],
            write_counts: vec![("aesgcm/key1/00ff".into(), 200_001)],
        }
    }

    #[test]
    fn round_trips() {
        let m = sample();
        assert_eq!(Meta::decode(&m.encode(), "f").unwrap(), m);
        assert_eq!(
            Meta::decode(&Meta::default().encode(), "f").unwrap(),
            Meta::default()
        );
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let bytes = sample().encode();
        for i in 0..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(
                matches!(Meta::decode(&bad, "f"), Err(Error::Corrupt(_))),
                "bit {i}"
            );
        }
        for n in 0..bytes.len() {
            assert!(Meta::decode(&bytes[..n], "f").is_err());
        }
    }
}
