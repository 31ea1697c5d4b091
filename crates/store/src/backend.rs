//! The interface every storage backend offers the server: the etcd KV operations in etcd's own
//! message types. The server validates requests (empty keys, txn limits, duplicate keys, sizes)
//! before calling; the backend applies etcd's semantics (revisions, compaction, leases) and
//! fills `header.revision` in every response it returns (the server adds cluster/member ids).

use std::future::Future;

use coffer_proto::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveResponse, LeaseRevokeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};

use crate::auth::{AuthChange, AuthChanged, AuthState};
use crate::{Caller, Error};

/// Sizes and positions the Maintenance service reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStatus {
    /// Current revision of the keyspace (1 for an empty store).
    pub revision: i64,
    /// Compacted revision (0 when never compacted).
    pub compact_revision: i64,
    /// Size of the backend files in bytes.
    pub db_size: i64,
    /// Bytes in use by live data.
    pub db_size_in_use: i64,
}

/// An etcd-semantics key-value backend.
pub trait Backend: Send + Sync + 'static {
    /// `KV.Range`: READ on the range, checked against the current auth state.
    fn range(
        &self,
        caller: &Caller,
        req: RangeRequest,
    ) -> impl Future<Output = Result<RangeResponse, Error>> + Send;
    /// `KV.Put`. Acknowledged only once durable. Permissions are checked as it applies.
    fn put(
        &self,
        caller: &Caller,
        req: PutRequest,
    ) -> impl Future<Output = Result<PutResponse, Error>> + Send;
    /// `KV.DeleteRange`. Acknowledged only once durable. Permissions are checked as it applies.
    fn delete_range(
        &self,
        caller: &Caller,
        req: DeleteRangeRequest,
    ) -> impl Future<Output = Result<DeleteRangeResponse, Error>> + Send;
    /// `KV.Txn`: compares evaluated on plaintext; one revision for all writes. Permissions
    /// (compares, both branches, nested txns) are checked as it applies.
    fn txn(
        &self,
        caller: &Caller,
        req: TxnRequest,
    ) -> impl Future<Output = Result<TxnResponse, Error>> + Send;
    /// `KV.Compact`.
    fn compact(
        &self,
        req: CompactionRequest,
    ) -> impl Future<Output = Result<CompactionResponse, Error>> + Send;
    /// Revision, compaction and size figures.
    fn status(&self) -> impl Future<Output = Result<StoreStatus, Error>> + Send;
    /// The watch hub fed by this backend's commits, if it has one.
    fn watch_hub(&self) -> Option<std::sync::Arc<crate::watch::WatchHub>> {
        None
    }
    /// `Lease.LeaseGrant`: `id` 0 = server-chosen; TTL raised to the minimum. Durable.
    fn lease_grant(
        &self,
        req: LeaseGrantRequest,
    ) -> impl Future<Output = Result<LeaseGrantResponse, Error>> + Send {
        let _ = req;
        async { Err(Error::Engine("this backend has no leases".into())) }
    }
    /// `Lease.LeaseRevoke`: deletes the attached keys in one revision (WRITE on each).
    fn lease_revoke(
        &self,
        caller: &Caller,
        id: i64,
    ) -> impl Future<Output = Result<LeaseRevokeResponse, Error>> + Send {
        let _ = (caller, id);
        async { Err(Error::Engine("this backend has no leases".into())) }
    }
    /// One keep-alive: renews to the granted TTL; TTL 0 for an unknown or expired lease.
    fn lease_keep_alive(&self, id: i64) -> Result<LeaseKeepAliveResponse, Error> {
        let _ = id;
        Err(Error::Engine("this backend has no leases".into()))
    }
    /// A lease's granted and remaining TTL and keys; `None` if unknown. With `keys` (etcd's
    /// LeaseTimeToLive `keys=true`) the caller needs READ on every attached key.
    fn lease_status(
        &self,
        caller: &Caller,
        id: i64,
        keys: bool,
    ) -> Result<Option<crate::lease::LeaseStatus>, Error> {
        let _ = (caller, id, keys);
        Ok(None)
    }
    /// The auth state now (enabled, revision, users, roles).
    fn auth_view(&self) -> std::sync::Arc<AuthState> {
        std::sync::Arc::new(AuthState::default())
    }
    /// Whether auth is enabled.
    fn auth_enabled(&self) -> bool {
        self.auth_view().enabled
    }
    /// Makes an auth change for `caller` (admin while auth is enabled), durably.
    fn auth_change(
        &self,
        caller: &Caller,
        change: AuthChange,
    ) -> impl Future<Output = Result<AuthChanged, Error>> + Send {
        let _ = (caller, change);
        async { Err(Error::Engine("this backend has no auth store".into())) }
    }
    /// The active alarms (etcd's `Alarm` GET with no filter).
    fn alarms(&self) -> Vec<coffer_proto::AlarmMember> {
        Vec::new()
    }
    /// Raises or clears an alarm, durably; answers what etcd's `Alarm` answers.
    fn change_alarm(
        &self,
        change: crate::AlarmChange,
    ) -> impl Future<Output = Result<Vec<coffer_proto::AlarmMember>, Error>> + Send {
        let _ = change;
        async { Err(Error::Engine("this backend has no alarms".into())) }
    }
    /// `Ok` while the store can write; otherwise why not (writes stopped after a commit of
    /// unknown outcome, or a full disk). For `/health`; never names a key or a value.
    fn write_health(&self) -> Result<(), String> {
        Ok(())
    }
    /// Whether the NOSPACE alarm is active: puts, txns with puts and lease grants are refused.
    fn no_space(&self) -> bool {
        crate::alarm::no_space(&self.alarms())
    }
    /// Whether a write of quota `cost` ([`crate::quota`]) fits under the backend quota now
    /// (etcd's check before validation); a write that does not is refused with NOSPACE.
    fn quota_allows(&self, cost: i64) -> bool {
        let _ = cost;
        true
    }
    /// Every lease id, soonest expiry first.
    fn lease_ids(&self) -> Vec<i64> {
        Vec::new()
    }
    /// The current revision without a round trip through the writer, if the backend knows it.
    fn revision_now(&self) -> Option<i64> {
        None
    }
}

impl<B: Backend> Backend for std::sync::Arc<B> {
    fn range(
        &self,
        caller: &Caller,
        req: RangeRequest,
    ) -> impl Future<Output = Result<RangeResponse, Error>> + Send {
        (**self).range(caller, req)
    }
    fn put(
        &self,
        caller: &Caller,
        req: PutRequest,
    ) -> impl Future<Output = Result<PutResponse, Error>> + Send {
        (**self).put(caller, req)
    }
    fn delete_range(
        &self,
        caller: &Caller,
        req: DeleteRangeRequest,
    ) -> impl Future<Output = Result<DeleteRangeResponse, Error>> + Send {
        (**self).delete_range(caller, req)
    }
    fn txn(
        &self,
        caller: &Caller,
        req: TxnRequest,
    ) -> impl Future<Output = Result<TxnResponse, Error>> + Send {
        (**self).txn(caller, req)
    }
    fn compact(
        &self,
        req: CompactionRequest,
    ) -> impl Future<Output = Result<CompactionResponse, Error>> + Send {
        (**self).compact(req)
    }
    fn status(&self) -> impl Future<Output = Result<StoreStatus, Error>> + Send {
        (**self).status()
    }
    fn watch_hub(&self) -> Option<std::sync::Arc<crate::watch::WatchHub>> {
        (**self).watch_hub()
    }
    fn lease_grant(
        &self,
        req: LeaseGrantRequest,
    ) -> impl Future<Output = Result<LeaseGrantResponse, Error>> + Send {
        (**self).lease_grant(req)
    }
    fn lease_revoke(
        &self,
        caller: &Caller,
        id: i64,
    ) -> impl Future<Output = Result<LeaseRevokeResponse, Error>> + Send {
        (**self).lease_revoke(caller, id)
    }
    fn lease_keep_alive(&self, id: i64) -> Result<LeaseKeepAliveResponse, Error> {
        (**self).lease_keep_alive(id)
    }
    fn lease_status(
        &self,
        caller: &Caller,
        id: i64,
        keys: bool,
    ) -> Result<Option<crate::lease::LeaseStatus>, Error> {
        (**self).lease_status(caller, id, keys)
    }
    fn auth_view(&self) -> std::sync::Arc<AuthState> {
        (**self).auth_view()
    }
    fn auth_enabled(&self) -> bool {
        (**self).auth_enabled()
    }
    fn auth_change(
        &self,
        caller: &Caller,
        change: AuthChange,
    ) -> impl Future<Output = Result<AuthChanged, Error>> + Send {
        (**self).auth_change(caller, change)
    }
    fn lease_ids(&self) -> Vec<i64> {
        (**self).lease_ids()
    }
    fn quota_allows(&self, cost: i64) -> bool {
        (**self).quota_allows(cost)
    }
    fn alarms(&self) -> Vec<coffer_proto::AlarmMember> {
        (**self).alarms()
    }
    fn change_alarm(
        &self,
        change: crate::AlarmChange,
    ) -> impl Future<Output = Result<Vec<coffer_proto::AlarmMember>, Error>> + Send {
        (**self).change_alarm(change)
    }
    fn revision_now(&self) -> Option<i64> {
        (**self).revision_now()
    }
    fn write_health(&self) -> Result<(), String> {
        (**self).write_health()
    }
}
