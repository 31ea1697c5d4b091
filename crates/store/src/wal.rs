//! The write-ahead log in front of the engine, as etcd keeps its WAL in front of bbolt.
//!
//! A redb commit that is durable on its own writes several scattered pages before its
//! `fdatasync`; a group's batch appended to one preallocated file and `fdatasync`ed costs one
//! sequential write. The engine ([`crate::engine`]) appends each group's batch here, makes it
//! durable, and only then commits it to redb without an fsync. Every durable redb commit records
//! the last sequence number it covers (its checkpoint) and the log starts again at offset 0.
//!
//! Entry: `len u32 LE ‖ crc32 u32 LE (of len ‖ seq ‖ payload) ‖ seq u64 LE ‖ payload ‖ trailer`, the
//! trailer being the same 16 header bytes again. Payloads are opaque here.
//!
//! Recovery rules ([`Wal::open`]), because only the last entry can legitimately be torn (one
//! group is in flight at a time, and it was not acknowledged):
//! - the entries from offset 0 form one run of consecutive sequence numbers; those at or below
//!   the checkpoint are already in the engine and skipped, the rest are replayed;
//! - where the run stops, the rest of the file must hold no trace of a later write: no valid
//!   entry or trailer with a higher sequence number, and no complete (trailer-confirmed) entry
//!   with the next one. Otherwise an entry in the middle is damaged and the log refuses to open,
//!   naming the file, the offset and the entries that would be lost;
//! - the first entry may not start beyond `checkpoint + 1` (entries are missing), the file may
//!   not be missing when the engine has a checkpoint, nor shorter than its preallocated size.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::Error;

/// The log file under the data directory.
pub(crate) const WAL_FILE: &str = "coffer.wal";
/// Preallocated size: writes into allocated blocks keep `fdatasync` to the data itself.
pub(crate) const CAPACITY: u64 = 8 * 1024 * 1024;
/// A checkpoint is taken once the log holds this much.
const CHECKPOINT_AT: u64 = CAPACITY / 2;
const HEADER: usize = 16;
/// Header and trailer.
const FRAMING: usize = 2 * HEADER;

fn io_err<'a>(what: &'a str, path: &'a Path) -> impl Fn(std::io::Error) -> Error + 'a {
    move |e| Error::Engine(format!("{what} {}: {e}", path.display()))
}

/// The open log.
#[derive(Debug)]
pub(crate) struct Wal {
    file: File,
    path: PathBuf,
    offset: u64,
    last_seq: u64,
    buf: Vec<u8>,
}

/// The damage [`Wal::open`] refuses to start with.
fn damaged(path: &Path, at: usize, what: String) -> Error {
    Error::Corrupt(format!(
        "{}: {what} at offset {at}; the log holds acknowledged writes after this point, so \
         starting would lose them. Restore the data directory from a backup or a snapshot \
         (`coffer snapshot restore`)",
        path.display()
    ))
}

impl Wal {
    /// Opens the log in `dir` and returns the payloads after `checkpoint_seq`, in order, for
    /// replay. `fresh`: the engine was just created, so a missing log is created (and
    /// preallocated); otherwise a missing or truncated log is refused.
    #[cfg(test)]
    pub(crate) fn open(
        dir: &Path,
        checkpoint_seq: u64,
        fresh: bool,
    ) -> Result<(Wal, Vec<Vec<u8>>), Error> {
        Self::open_beside(dir, checkpoint_seq, fresh, Path::new("the engine file"))
    }

    /// [`Wal::open`], naming `engine_file` (whose checkpoint `checkpoint_seq` is) in errors.
    pub(crate) fn open_beside(
        dir: &Path,
        checkpoint_seq: u64,
        fresh: bool,
        engine_file: &Path,
    ) -> Result<(Wal, Vec<Vec<u8>>), Error> {
        let path = dir.join(WAL_FILE);
        let existed = path.exists();
        if !existed && !fresh {
            return Err(Error::Corrupt(format!(
                "{}: the write-ahead log is missing, but the engine file expects one (its last \
                 checkpoint is entry {checkpoint_seq}); acknowledged writes may be in it. Put \
                 the file back, or restore the data directory from a backup or a snapshot",
                path.display()
            )));
        }
        let mut o = OpenOptions::new();
        o.read(true).write(true).create(true);
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(0o600);
        }
        let mut file = o
            .open(&path)
            .map_err(io_err("cannot open the log", &path))?;
        let len = file
            .metadata()
            .map_err(io_err("cannot stat the log", &path))?
            .len();
        if existed && len < CAPACITY && !fresh {
            return Err(Error::Corrupt(format!(
                "{}: the write-ahead log is {len} bytes, shorter than the {CAPACITY} bytes it \
                 is created with: it was truncated and may have lost acknowledged writes",
                path.display()
            )));
        }
        let mut payloads = Vec::new();
        let mut last_seq = checkpoint_seq;
        if existed && len > 0 {
            let mut bytes = Vec::with_capacity(len as usize);
            file.seek(SeekFrom::Start(0))
                .and_then(|_| file.read_to_end(&mut bytes))
                .map_err(io_err("cannot read the log", &path))?;
            let scan = scan(&bytes, checkpoint_seq).map_err(|(at, what)| {
                if at == 0 {
                    Error::Corrupt(format!(
                        "{}: {what}. Either log entries are missing or {} went back to an \
                         older commit (its own repair falls back to an earlier commit when the \
                         latest is damaged); the writes in between are in neither file. \
                         Restore the data directory from a backup or a snapshot",
                        path.display(),
                        engine_file.display()
                    ))
                } else {
                    damaged(&path, at, what)
                }
            })?;
            for (seq, range) in scan {
                if seq > checkpoint_seq {
                    payloads.push(bytes[range].to_vec());
                    last_seq = seq;
                }
            }
        }
        if len < CAPACITY {
            // Real zeros, not a sparse extension: later writes then allocate nothing.
            let zeros = vec![0u8; 1 << 20];
            file.seek(SeekFrom::Start(len))
                .map_err(io_err("cannot extend the log", &path))?;
            let mut left = CAPACITY - len;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                file.write_all(&zeros[..n])
                    .map_err(io_err("cannot extend the log", &path))?;
                left -= n as u64;
            }
            file.sync_all()
                .map_err(io_err("cannot sync the log", &path))?;
            crate::disk::sync_dir(dir)?;
        }
        Ok((
            Wal {
                file,
                path,
                offset: 0,
                last_seq,
                buf: Vec::new(),
            },
            payloads,
        ))
    }

    /// Sequence number of the last entry appended (or replayed).
    pub(crate) fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Whether the next commit should be a durable checkpoint instead of a log append.
    pub(crate) fn wants_checkpoint(&self) -> bool {
        self.offset >= CHECKPOINT_AT
    }

    /// Whether an entry with a payload of `len` bytes fits after the last one.
    pub(crate) fn fits(&self, len: usize) -> bool {
        self.offset + (len + FRAMING) as u64 <= CAPACITY
    }

    /// Appends `payload` as the next entry and makes it durable. The caller checked
    /// [`Wal::fits`]. An error means the entry may or may not be durable.
    pub(crate) fn append(&mut self, payload: &[u8]) -> Result<(), Error> {
        let seq = self.last_seq + 1;
        let len = u32::try_from(payload.len())
            .map_err(|_| Error::Engine("a commit group is larger than 4 GiB".into()))?;
        let header = header_bytes(len, checksum(len, seq, payload), seq);
        self.buf.clear();
        self.buf.extend_from_slice(&header);
        self.buf.extend_from_slice(payload);
        self.buf.extend_from_slice(&header);
        self.file
            .write_all_at(&self.buf, self.offset)
            .and_then(|()| {
                let started = std::time::Instant::now();
                self.file.sync_data()?;
                coffer_metrics::metrics()
                    .wal_fsync
                    .observe(started.elapsed().as_secs_f64());
                Ok(())
            })
            .map_err(io_err("cannot append to the log", &self.path))?;
        self.offset += self.buf.len() as u64;
        self.last_seq = seq;
        Ok(())
    }

    /// After a durable commit that recorded [`Wal::last_seq`] as its checkpoint: start over.
    pub(crate) fn reset(&mut self) {
        self.offset = 0;
    }
}

fn header_bytes(len: u32, crc: u32, seq: u64) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[4..8].copy_from_slice(&crc.to_le_bytes());
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h
}

/// A decoded header: `(len, crc, seq)`.
fn parse_header(b: &[u8]) -> Option<(usize, u32, u64)> {
    let len = u32::from_le_bytes(b.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(b.get(4..8)?.try_into().ok()?);
    let seq = u64::from_le_bytes(b.get(8..16)?.try_into().ok()?);
    Some((len, crc, seq))
}

/// The checksum of an entry: its length, sequence number and payload.
fn checksum(len: u32, seq: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(&seq.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// The entry at `at` if its header and checksum hold: `(seq, payload range, next)`. The
/// trailer is not needed for that (a damaged trailer leaves the entry whole); it only serves as
/// evidence that an entry was written completely.
fn entry_at(bytes: &[u8], at: usize) -> Option<(u64, std::ops::Range<usize>, usize)> {
    let header = bytes.get(at..at.checked_add(HEADER)?)?;
    let (len, crc, seq) = parse_header(header)?;
    let body = at + HEADER;
    let end = body.checked_add(len)?.checked_add(HEADER)?;
    let payload = bytes.get(body..end - HEADER)?;
    if seq == 0 || checksum(len as u32, seq, payload) != crc {
        return None;
    }
    Some((seq, body..end - HEADER, end))
}

/// Scans the log: the run of entries from offset 0 as `(seq, payload range)`, or where and why
/// the log is damaged.
#[allow(clippy::type_complexity)]
fn scan(
    bytes: &[u8],
    checkpoint_seq: u64,
) -> Result<Vec<(u64, std::ops::Range<usize>)>, (usize, String)> {
    let mut run = Vec::new();
    let mut at = 0usize;
    let mut prev: Option<u64> = None;
    while let Some((seq, range, next)) = entry_at(bytes, at) {
        match prev {
            None if seq > checkpoint_seq + 1 => {
                return Err((
                    0,
                    format!(
                        "the write-ahead log starts at entry {seq} but the engine's last \
                         checkpoint is entry {checkpoint_seq}: entries {} to {} are missing; \
                         refusing to start rather than serve less than was acknowledged",
                        checkpoint_seq + 1,
                        seq - 1
                    ),
                ))
            }
            Some(p) if seq != p + 1 => break,
            _ => {}
        }
        run.push((seq, range));
        prev = Some(seq);
        at = next;
    }
    // The run ended at `at`. Only an unacknowledged, torn last write may end it: look for any
    // sign of a write after it.
    let expected = prev
        .map_or(checkpoint_seq + 1, |p| p + 1)
        .max(checkpoint_seq + 1);
    if let Some((pos, seq)) = later_write(bytes, at, expected) {
        return Err((
            at,
            format!("entry {expected} is damaged (a complete entry {seq} follows at offset {pos})"),
        ));
    }
    Ok(run)
}

/// The first trace, at or after `from`, of an entry written completely after the run ended:
/// a whole entry with a sequence number above `expected`; a trailer whose checksum verifies the
/// payload before it (the entry's header is the damaged part); or, at `from`, entry `expected`
/// itself with its header and trailer agreeing (its payload is the damaged part). Every piece of
/// evidence but the last is checked against a checksum, so payload bytes that happen to look
/// like a header are not taken for one.
fn later_write(bytes: &[u8], from: usize, expected: u64) -> Option<(usize, u64)> {
    let max_seq = expected.saturating_add(CAPACITY / FRAMING as u64);
    if let Some(h) = bytes.get(from..from + HEADER) {
        if let Some((len, _, seq)) = parse_header(h) {
            let end = from + HEADER + len;
            if seq == expected && bytes.get(end..end + HEADER) == Some(h) {
                return Some((from, seq));
            }
        }
    }
    let mut pos = from;
    while pos + HEADER <= bytes.len() {
        // Most windows fail on the sequence number; test it first.
        let mut seq_bytes = [0u8; 8];
        seq_bytes.copy_from_slice(&bytes[pos + 8..pos + HEADER]);
        let seq = u64::from_le_bytes(seq_bytes);
        if seq >= expected && seq <= max_seq {
            if let Some((len, crc, _)) = parse_header(&bytes[pos..pos + HEADER]) {
                if seq > expected && entry_at(bytes, pos).is_some() {
                    return Some((pos, seq));
                }
                if let Some(start) = pos.checked_sub(HEADER + len).filter(|s| *s >= from) {
                    let payload = &bytes[start + HEADER..pos];
                    if checksum(len as u32, seq, payload) == crc {
                        return Some((start, seq));
                    }
                }
            }
        }
        pos += 1;
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::fs;

    fn payload(i: u8) -> Vec<u8> {
        vec![i; 40 + i as usize]
    }

    fn write(dir: &Path, n: u8) -> Vec<u64> {
        let (mut wal, _) = Wal::open(dir, 0, true).unwrap();
        let mut offsets = Vec::new();
        for i in 1..=n {
            offsets.push(wal.offset);
            wal.append(&payload(i)).unwrap();
        }
        offsets
    }

    #[test]
    fn entries_after_the_checkpoint_come_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 5);
        let (wal, replay) = Wal::open(dir.path(), 2, false).unwrap();
        assert_eq!(replay, vec![payload(3), payload(4), payload(5)]);
        assert_eq!(wal.last_seq(), 5);
    }

    #[test]
    fn old_entries_after_a_restart_at_offset_zero_are_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 0, true).unwrap();
        for i in 1..=4 {
            wal.append(&payload(i)).unwrap();
        }
        // Checkpoint at 4, then one new entry overwrites the start of the log.
        wal.reset();
        wal.append(&payload(5)).unwrap();
        drop(wal);
        let (_, replay) = Wal::open(dir.path(), 4, false).unwrap();
        assert_eq!(replay, vec![payload(5)]);
        // Checkpoint at 5 with nothing after it: nothing to replay.
        let (_, replay) = Wal::open(dir.path(), 5, false).unwrap();
        assert!(replay.is_empty());
    }

    #[test]
    fn a_torn_last_entry_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let offsets = write(dir.path(), 3);
        // The last entry's trailer and part of its body never reached the disk.
        let path = dir.path().join(WAL_FILE);
        let mut bytes = fs::read(&path).unwrap();
        let third = offsets[2] as usize;
        for b in &mut bytes[third + HEADER + 10..third + 200] {
            *b = 0;
        }
        fs::write(&path, &bytes).unwrap();
        let (wal, replay) = Wal::open(dir.path(), 0, false).unwrap();
        assert_eq!(replay, vec![payload(1), payload(2)]);
        assert_eq!(wal.last_seq(), 2);
    }

    #[test]
    fn damage_before_a_later_entry_refuses_to_open() {
        // Every byte of entries 1 and 2 (header, body, trailer): entry 3 follows, so any flip
        // there is damage, never a torn write, and must not silently drop entries 2 and 3.
        let dir = tempfile::tempdir().unwrap();
        let offsets = write(dir.path(), 3);
        let path = dir.path().join(WAL_FILE);
        let clean = fs::read(&path).unwrap();
        // Every header and trailer byte, and a spread of payload bytes.
        let framing = |at: usize| {
            offsets.iter().any(|&o| {
                let o = o as usize;
                (o..o + HEADER).contains(&at)
            }) || offsets[1..]
                .iter()
                .any(|&n| (n as usize - HEADER..n as usize).contains(&at))
        };
        for at in (0..offsets[2] as usize).filter(|&at| framing(at) || at % 13 == 0) {
            let mut bytes = clean.clone();
            bytes[at] ^= 0x40;
            fs::write(&path, &bytes).unwrap();
            match Wal::open(dir.path(), 0, false) {
                Err(Error::Corrupt(msg)) => {
                    assert!(msg.contains(WAL_FILE), "{msg}");
                    assert!(msg.contains("offset"), "{msg}");
                }
                Ok((_, replay)) => {
                    // Only a flip in a trailer leaves the entry whole by its header and checksum.
                    let in_trailer = offsets[1..]
                        .iter()
                        .any(|&next| (next as usize - HEADER..next as usize).contains(&at));
                    assert!(in_trailer, "flip at {at} was accepted");
                    assert_eq!(
                        replay,
                        vec![payload(1), payload(2), payload(3)],
                        "flip at {at}"
                    );
                }
                Err(e) => panic!("flip at {at}: {e}"),
            }
        }
    }

    #[test]
    fn damage_in_a_complete_last_entry_refuses_to_open() {
        // A flip anywhere in the last entry's header or body: its trailer shows it was written
        // whole and acknowledged, so it is damage, not a torn write. A flip in the trailer
        // leaves the entry whole.
        let dir = tempfile::tempdir().unwrap();
        let offsets = write(dir.path(), 3);
        let path = dir.path().join(WAL_FILE);
        let clean = fs::read(&path).unwrap();
        let start = offsets[2] as usize;
        let trailer = start + HEADER + payload(3).len();
        for at in start..trailer + HEADER {
            let mut bytes = clean.clone();
            bytes[at] ^= 0x08;
            fs::write(&path, &bytes).unwrap();
            match Wal::open(dir.path(), 0, false) {
                Err(Error::Corrupt(_)) => assert!(at < trailer, "flip at {at} refused"),
                Ok((_, replay)) => {
                    assert!(at >= trailer, "flip at {at} accepted");
                    assert_eq!(replay.len(), 3);
                }
                Err(e) => panic!("flip at {at}: {e}"),
            }
        }
    }

    #[test]
    fn payload_bytes_that_look_like_headers_are_not_evidence() {
        // A payload full of header-shaped windows with later sequence numbers (as lease rows
        // with equal TTLs produce): a torn last entry must still be dropped, not refused.
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 0, true).unwrap();
        let mut fake = Vec::new();
        for _ in 0..8 {
            let body = [0x5au8; 24];
            fake.extend_from_slice(&(body.len() as u32).to_le_bytes());
            fake.extend_from_slice(&[1, 2, 3, 4]);
            fake.extend_from_slice(&9u64.to_le_bytes());
            fake.extend_from_slice(&body);
            fake.extend_from_slice(&(body.len() as u32).to_le_bytes());
            fake.extend_from_slice(&[5, 6, 7, 8]);
            fake.extend_from_slice(&9u64.to_le_bytes());
        }
        let mut third = 0;
        for i in 1..=3 {
            third = wal.offset as usize;
            wal.append(&fake).unwrap();
            assert_eq!(wal.last_seq(), i);
        }
        drop(wal);
        let path = dir.path().join(WAL_FILE);
        let mut bytes = fs::read(&path).unwrap();
        let end = third + HEADER + fake.len() + HEADER;
        for b in &mut bytes[third + HEADER + 100..end] {
            *b = 0;
        }
        fs::write(&path, &bytes).unwrap();
        let (_, replay) = Wal::open(dir.path(), 0, false).unwrap();
        assert_eq!(replay.len(), 2);
    }

    #[test]
    fn a_missing_or_truncated_log_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 2);
        let path = dir.path().join(WAL_FILE);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(4096).unwrap();
        drop(f);
        let err = Wal::open(dir.path(), 0, false).unwrap_err();
        assert!(err.to_string().contains("shorter"), "{err}");
        fs::remove_file(&path).unwrap();
        let err = Wal::open(dir.path(), 1, false).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn a_log_starting_beyond_the_checkpoint_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 0, true).unwrap();
        wal.last_seq = 9;
        wal.append(&payload(1)).unwrap();
        drop(wal);
        let err = Wal::open(dir.path(), 3, false).unwrap_err();
        assert!(
            err.to_string().contains("entries 4 to 9 are missing"),
            "{err}"
        );
    }

    #[test]
    fn file_is_preallocated_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        drop(Wal::open(dir.path(), 0, true).unwrap());
        let m = fs::metadata(dir.path().join(WAL_FILE)).unwrap();
        assert_eq!(m.len(), CAPACITY);
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
    }
}
