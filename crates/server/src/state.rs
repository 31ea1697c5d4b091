//! State the services share: the member's identity for response headers, the limits, and the
//! alarm list (kept in memory; the quota alarm raised by the store comes with a later issue).

use std::sync::{Arc, Mutex};

use coffer_proto::{AlarmMember, AlarmType, ResponseHeader};

use crate::config::ServerConfig;

/// The raft term a single member reports (etcd shows 2 on a fresh single member).
pub const RAFT_TERM: u64 = 2;

/// Shared by every service of one server.
#[derive(Debug)]
pub struct Shared {
    /// The configuration the server was started with.
    pub config: ServerConfig,
    alarms: Mutex<Vec<AlarmMember>>,
    /// Set once shutdown begins: long-lived streams (Watch, LeaseKeepAlive) end on it, so a
    /// graceful stop does not wait for clients that would never hang up.
    stopping: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    /// Wraps a configuration.
    pub fn new(config: ServerConfig) -> Arc<Self> {
        Arc::new(Shared {
            config,
            alarms: Mutex::new(Vec::new()),
            stopping: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Starts shutdown: every stream wrapped by [`Shared::until_stopped`] ends.
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// `stream`, ended early once shutdown begins.
    pub fn until_stopped<S: futures::Stream>(
        &self,
        stream: S,
    ) -> impl futures::Stream<Item = S::Item> {
        let mut stopping = self.stopping.subscribe();
        futures::StreamExt::take_until(stream, async move {
            // An error means the sender is gone, which also means stop.
            let _ = stopping.wait_for(|s| *s).await;
        })
    }

    /// A header with this member's ids, the raft term and `revision`.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.config.cluster_id,
            member_id: self.config.member_id,
            revision,
            raft_term: RAFT_TERM,
        }
    }

    /// Fills the ids and term into a header the store returned (keeping its revision).
    pub fn stamp(&self, header: &mut Option<ResponseHeader>) {
        let revision = header.map_or(0, |h| h.revision);
        *header = Some(self.header(revision));
    }

    fn alarms(&self) -> std::sync::MutexGuard<'_, Vec<AlarmMember>> {
        // The list is only ever pushed to or filtered; a poisoned lock still holds a valid list.
        self.alarms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Active alarms, all of them when `filter` is NONE.
    pub fn alarm_list(&self, filter: AlarmType) -> Vec<AlarmMember> {
        self.alarms()
            .iter()
            .filter(|a| filter == AlarmType::None || a.alarm == filter as i32)
            .copied()
            .collect()
    }

    /// Activates an alarm; returns the active entry (the existing one if already active).
    pub fn activate(&self, member_id: u64, alarm: AlarmType) -> AlarmMember {
        let mut alarms = self.alarms();
        let wanted = AlarmMember {
            member_id,
            alarm: alarm as i32,
        };
        if let Some(existing) = alarms.iter().find(|a| **a == wanted) {
            return *existing;
        }
        alarms.push(wanted);
        wanted
    }

    /// Deactivates an alarm; returns it if it was active.
    pub fn deactivate(&self, member_id: u64, alarm: AlarmType) -> Option<AlarmMember> {
        let mut alarms = self.alarms();
        let wanted = AlarmMember {
            member_id,
            alarm: alarm as i32,
        };
        let pos = alarms.iter().position(|a| *a == wanted)?;
        Some(alarms.remove(pos))
    }

    /// Whether the NOSPACE alarm is active (writes that add data are refused).
    pub fn no_space(&self) -> bool {
        self.alarms()
            .iter()
            .any(|a| a.alarm == AlarmType::Nospace as i32)
    }
}
