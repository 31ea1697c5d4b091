//! `etcdserverpb.Maintenance`: Status, Alarm, Defragment, Hash, HashKV, MoveLeader, Downgrade.
//!
//! Hash and HashKV digest the plaintext keyspace (see `hash`). Snapshot streams the store's
//! snapshot (etcd's backend layout, values sealed: `coffer_store::snapshot`) in 32 KiB chunks,
//! then its SHA-256, as `etcdctl snapshot save` expects.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use coffer_proto::{
    alarm_request::AlarmAction, downgrade_request::DowngradeAction,
    maintenance_server::Maintenance, AlarmMember, AlarmRequest, AlarmResponse, AlarmType,
    DefragmentRequest, DefragmentResponse, DowngradeRequest, DowngradeResponse, HashKvRequest,
    HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest, MoveLeaderResponse,
    SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use coffer_store::{AlarmChange, Backend};
use futures::Stream;
use tonic::{Request, Response, Status};
use tracing::{info, instrument, warn};

use crate::caller::{caller_of, maintenance_admin};
use crate::errors::ServerError;
use crate::hash::hash_keyspace;
use crate::state::{Shared, RAFT_TERM};
use crate::ETCD_VERSION;

/// Backends that can give free space back to the file system (`Maintenance.Defragment`).
pub trait Defragment: Send + Sync + 'static {
    /// Rewrites the backend without free pages.
    fn defragment(&self) -> impl Future<Output = Result<(), coffer_store::Error>> + Send;
}

impl Defragment for coffer_store::EmbeddedStore {
    fn defragment(&self) -> impl Future<Output = Result<(), coffer_store::Error>> + Send {
        coffer_store::EmbeddedStore::defragment(self)
    }
}

/// Backends that can produce a consistent snapshot (`Maintenance.Snapshot`).
pub trait SnapshotSource: Send + Sync + 'static {
    /// Builds the snapshot file; blocking (the service calls it on a blocking thread).
    fn snapshot(&self) -> Result<coffer_store::snapshot::SnapshotFile, coffer_store::Error>;
}

impl SnapshotSource for coffer_store::EmbeddedStore {
    fn snapshot(&self) -> Result<coffer_store::snapshot::SnapshotFile, coffer_store::Error> {
        coffer_store::EmbeddedStore::snapshot(self)
    }
}

/// Chunks buffered between the blocking reader and the gRPC stream.
const SNAPSHOT_BUFFER: usize = 4;

/// The Maintenance service over a store `B`.
#[derive(Debug)]
pub struct MaintenanceService<B> {
    backend: Arc<B>,
    shared: Arc<Shared>,
}

impl<B> MaintenanceService<B> {
    /// A Maintenance service for `backend`.
    pub fn new(backend: Arc<B>, shared: Arc<Shared>) -> Self {
        MaintenanceService { backend, shared }
    }
}

/// The stream type of `Snapshot`.
pub type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

/// `"memberID:13668033151171901709 alarm:NOSPACE "`: etcd's protobuf-text form of an alarm in
/// `StatusResponse.errors`, trailing space included.
fn alarm_text(member_id: u64, alarm: i32) -> String {
    let name = AlarmType::try_from(alarm)
        .map(|a| a.as_str_name().to_owned())
        .unwrap_or_else(|_| alarm.to_string());
    format!("memberID:{member_id} alarm:{name} ")
}

/// `major.minor.patch` with optional `-pre`/`+build`, as Go's semver parser accepts.
fn is_semver(v: &str) -> bool {
    let core = v.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

#[tonic::async_trait]
impl<B: Backend + Defragment + SnapshotSource> Maintenance for MaintenanceService<B> {
    #[instrument(skip_all, name = "maintenance.alarm")]
    async fn alarm(
        &self,
        request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        caller_of(&request, &self.shared, &self.backend.auth_view())?;
        let req = request.into_inner();
        let alarm = AlarmType::try_from(req.alarm).unwrap_or(AlarmType::None);
        let member = AlarmMember {
            member_id: req.member_id,
            alarm: alarm as i32,
        };
        let alarms = match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Get) => self
                .backend
                .alarms()
                .into_iter()
                // etcd's `AlarmStore.Get`: NONE lists every alarm, any other value (known or
                // not) only the alarms of that type.
                .filter(|a| req.alarm == AlarmType::None as i32 || a.alarm == req.alarm)
                .collect(),
            Ok(AlarmAction::Activate) => {
                info!(
                    member_id = req.member_id,
                    alarm = req.alarm,
                    "alarm activated"
                );
                self.backend
                    .change_alarm(AlarmChange::Activate(member))
                    .await
                    .map_err(ServerError::from)?
            }
            Ok(AlarmAction::Deactivate) => {
                info!(
                    member_id = req.member_id,
                    alarm = req.alarm,
                    "alarm deactivated"
                );
                self.backend
                    .change_alarm(AlarmChange::Deactivate(member))
                    .await
                    .map_err(ServerError::from)?
            }
            // etcd ignores unknown actions and answers an empty response.
            Err(_) => Vec::new(),
        };
        let revision = self
            .backend
            .status()
            .await
            .map_err(ServerError::from)?
            .revision;
        Ok(Response::new(AlarmResponse {
            header: Some(self.shared.header(revision)),
            alarms,
        }))
    }

    #[instrument(skip_all, name = "maintenance.status")]
    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        caller_of(&request, &self.shared, &self.backend.auth_view())?;
        let st = self.backend.status().await.map_err(ServerError::from)?;
        let member_id = self.shared.config.member_id;
        let errors = self
            .backend
            .alarms()
            .iter()
            .map(|a| alarm_text(a.member_id, a.alarm))
            .collect();
        let index = u64::try_from(st.revision).unwrap_or(0);
        Ok(Response::new(StatusResponse {
            header: Some(self.shared.header(st.revision)),
            version: ETCD_VERSION.to_owned(),
            db_size: st.db_size,
            leader: member_id,
            raft_index: index,
            raft_term: RAFT_TERM,
            raft_applied_index: index,
            errors,
            db_size_in_use: st.db_size_in_use,
            is_learner: false,
            ..Default::default()
        }))
    }

    #[instrument(skip_all, name = "maintenance.defragment")]
    async fn defragment(
        &self,
        request: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        maintenance_admin(
            &request,
            &self.shared,
            &self.backend.auth_view(),
            "defragment",
        )?;
        let before = self
            .backend
            .status()
            .await
            .map_err(ServerError::from)?
            .db_size;
        self.backend.defragment().await.map_err(ServerError::from)?;
        let st = self.backend.status().await.map_err(ServerError::from)?;
        info!(before, after = st.db_size, "defragmented");
        Ok(Response::new(DefragmentResponse {
            header: Some(self.shared.header(st.revision)),
        }))
    }

    #[instrument(skip_all, name = "maintenance.hash")]
    async fn hash(&self, request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        maintenance_admin(&request, &self.shared, &self.backend.auth_view(), "hash")?;
        let h = hash_keyspace(&*self.backend, 0).await?;
        Ok(Response::new(HashResponse {
            header: Some(self.shared.header(h.current_revision)),
            hash: h.hash,
        }))
    }

    #[instrument(skip_all, name = "maintenance.hash_kv")]
    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        maintenance_admin(&request, &self.shared, &self.backend.auth_view(), "hash_kv")?;
        let h = hash_keyspace(&*self.backend, request.into_inner().revision).await?;
        Ok(Response::new(HashKvResponse {
            header: Some(self.shared.header(h.current_revision)),
            hash: h.hash,
            compact_revision: h.compact_revision,
            hash_revision: h.hash_revision,
        }))
    }

    type SnapshotStream = SnapshotStream;

    #[instrument(skip_all, name = "maintenance.snapshot")]
    async fn snapshot(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        maintenance_admin(
            &request,
            &self.shared,
            &self.backend.auth_view(),
            "snapshot",
        )?;
        // Each snapshot is a full copy of the database on the data directory's disk until it
        // has been sent: at most `max_concurrent_snapshots` at once; more are refused at once
        // (etcd's overload error) rather than queued, so waiting calls cannot pile up.
        let Ok(permit) = Arc::clone(&self.shared.snapshots).try_acquire_owned() else {
            warn!(
                limit = self.shared.config.max_concurrent_snapshots,
                "snapshot refused: too many snapshots in progress"
            );
            return Err(ServerError::TooManyRequests.into());
        };
        let backend = Arc::clone(&self.backend);
        let mut snap = tokio::task::spawn_blocking(move || backend.snapshot())
            .await
            .map_err(|e| Status::internal(format!("coffer: the snapshot task failed: {e}")))?
            .map_err(ServerError::from)?;
        let info = snap.info();
        info!(
            revision = info.revision,
            bytes = info.size,
            records = info.records,
            "sending a snapshot"
        );
        let header = self.shared.header(info.revision);
        let (tx, rx) = tokio::sync::mpsc::channel(SNAPSHOT_BUFFER);
        // Reads the file on a blocking thread; stops when the client goes away.
        // The permit is released with the file, once every chunk is queued or the client left.
        tokio::task::spawn_blocking(move || loop {
            let _permit = &permit;
            let msg = match snap.next_chunk() {
                Ok(Some(chunk)) => Ok(SnapshotResponse {
                    header: Some(header),
                    remaining_bytes: chunk.remaining,
                    blob: chunk.blob,
                    version: String::new(),
                }),
                Ok(None) => return,
                Err(e) => Err(Status::from(ServerError::from(e))),
            };
            let failed = msg.is_err();
            if tx.blocking_send(msg).is_err() || failed {
                return;
            }
        });
        let stream = self
            .shared
            .until_stopped(tokio_stream::wrappers::ReceiverStream::new(rx));
        Ok(Response::new(Box::pin(stream)))
    }

    #[instrument(skip_all, name = "maintenance.move_leader")]
    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        caller_of(&request, &self.shared, &self.backend.auth_view())?;
        let req = request.into_inner();
        if req.target_id != self.shared.config.member_id {
            return Err(ServerError::BadLeaderTransferee.into());
        }
        let revision = self
            .backend
            .status()
            .await
            .map_err(ServerError::from)?
            .revision;
        Ok(Response::new(MoveLeaderResponse {
            header: Some(self.shared.header(revision)),
        }))
    }

    #[instrument(skip_all, name = "maintenance.downgrade")]
    async fn downgrade(
        &self,
        request: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        caller_of(&request, &self.shared, &self.backend.auth_view())?;
        let req = request.into_inner();
        match DowngradeAction::try_from(req.action) {
            Ok(DowngradeAction::Cancel) => Err(ServerError::NoInflightDowngrade.into()),
            // VALIDATE, ENABLE (and unknown actions, which etcd also parses the version for):
            // Coffer cannot run as an older etcd, so every well-formed target is invalid.
            _ if !is_semver(&req.version) => Err(ServerError::WrongDowngradeVersionFormat.into()),
            _ => Err(ServerError::InvalidDowngradeTargetVersion.into()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn alarm_text_is_etcds() {
        assert_eq!(
            alarm_text(13668033151171901709, AlarmType::Nospace as i32),
            "memberID:13668033151171901709 alarm:NOSPACE "
        );
    }

    #[test]
    fn semver_check() {
        assert!(is_semver("3.4.0"));
        assert!(is_semver("3.4.0-rc.1"));
        assert!(!is_semver("3.4"));
        assert!(!is_semver("v3.4.0"));
        assert!(!is_semver(""));
    }
}
