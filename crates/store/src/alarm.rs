//! The member's alarm list (etcd's `alarm` bucket): kept in memory for the checks every write
//! makes, and in the engine's `meta` table so an alarm survives a restart, as etcd's does. A
//! NOSPACE alarm raised before a crash still refuses writes after it, until an operator disarms it.

use coffer_proto::{AlarmMember, AlarmType};

use crate::Error;

/// The `meta` entry holding the list.
pub(crate) const META_KEY: &str = "alarms";

/// One entry: member id (8 bytes BE) then alarm type (4 bytes BE).
const ENTRY: usize = 12;

/// What an alarm request changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlarmChange {
    /// Raise `alarm` for `member_id` (no change if it is already active).
    Activate(AlarmMember),
    /// Clear it (no change if it is not active).
    Deactivate(AlarmMember),
}

/// Applies `change` to `list`; returns what etcd answers: the entry for an activation, the
/// removed entry (or nothing) for a deactivation.
pub(crate) fn apply(list: &mut Vec<AlarmMember>, change: AlarmChange) -> Vec<AlarmMember> {
    match change {
        AlarmChange::Activate(a) => {
            if !list.contains(&a) {
                list.push(a);
            }
            vec![a]
        }
        AlarmChange::Deactivate(a) => match list.iter().position(|x| *x == a) {
            Some(pos) => vec![list.remove(pos)],
            None => Vec::new(),
        },
    }
}

/// Whether writes that add data must be refused.
pub(crate) fn no_space(list: &[AlarmMember]) -> bool {
    list.iter().any(|a| a.alarm == AlarmType::Nospace as i32)
}

pub(crate) fn encode(list: &[AlarmMember]) -> Vec<u8> {
    let mut out = Vec::with_capacity(list.len() * ENTRY);
    for a in list {
        out.extend_from_slice(&a.member_id.to_be_bytes());
        out.extend_from_slice(&a.alarm.to_be_bytes());
    }
    out
}

pub(crate) fn decode(bytes: &[u8]) -> Result<Vec<AlarmMember>, Error> {
    if !bytes.len().is_multiple_of(ENTRY) {
        return Err(Error::Engine(format!(
            "corrupt meta entry {META_KEY:?}: {} bytes is not a whole number of {ENTRY}-byte entries",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(ENTRY)
        .map(|c| {
            let mut member = [0u8; 8];
            member.copy_from_slice(&c[..8]);
            let mut alarm = [0u8; 4];
            alarm.copy_from_slice(&c[8..]);
            AlarmMember {
                member_id: u64::from_be_bytes(member),
                alarm: i32::from_be_bytes(alarm),
            }
        })
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn nospace(member_id: u64) -> AlarmMember {
        AlarmMember {
            member_id,
            alarm: AlarmType::Nospace as i32,
        }
    }

    #[test]
    fn activate_is_idempotent_and_deactivate_answers_what_it_removed() {
        let mut list = Vec::new();
        assert_eq!(
            apply(&mut list, AlarmChange::Activate(nospace(7))),
            vec![nospace(7)]
        );
        assert_eq!(
            apply(&mut list, AlarmChange::Activate(nospace(7))),
            vec![nospace(7)]
        );
        assert_eq!(list.len(), 1);
        assert!(no_space(&list));
        assert_eq!(
            apply(&mut list, AlarmChange::Deactivate(nospace(8))),
            vec![]
        );
        assert_eq!(
            apply(&mut list, AlarmChange::Deactivate(nospace(7))),
            vec![nospace(7)]
        );
        assert!(!no_space(&list));
    }

    #[test]
    fn list_round_trips_and_corrupt_bytes_are_an_error() {
        let list = vec![
            nospace(u64::MAX),
            AlarmMember {
                member_id: 1,
                alarm: AlarmType::Corrupt as i32,
            },
        ];
        assert_eq!(decode(&encode(&list)).unwrap(), list);
        assert!(decode(&[0u8; 13]).is_err());
    }
}
