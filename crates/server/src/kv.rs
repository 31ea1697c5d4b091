//! `etcdserverpb.KV`: Range, Put, DeleteRange, Txn, Compact.
//!
//! Each call validates as etcd's `v3rpc/key.go` does, applies the write limits (size, NOSPACE),
//! delegates to the store and stamps the response header with this member's identity. Logs
//! carry sizes and counts, never keys' values.

use std::sync::Arc;

use coffer_proto::{
    kv_server::Kv, AlarmMember, AlarmType, CompactionRequest, CompactionResponse,
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    TxnRequest, TxnResponse,
};
use coffer_store::{quota, AlarmChange, Backend};
use tonic::{Request, Response, Status};
use tracing::{debug, error, instrument, warn};

use crate::caller::{caller_of, refused, target};
use crate::errors::ServerError;
use crate::state::Shared;
use crate::validate;

/// The KV service over a store `B`.
#[derive(Debug)]
pub struct KvService<B> {
    backend: Arc<B>,
    shared: Arc<Shared>,
}

impl<B: Backend> KvService<B> {
    /// A KV service answering from `backend`.
    pub fn new(backend: Arc<B>, shared: Arc<Shared>) -> Self {
        KvService { backend, shared }
    }

    /// Maps a store error of a write; a write over the quota raises the NOSPACE alarm.
    async fn failed(&self, err: coffer_store::Error) -> ServerError {
        let err = ServerError::from(err);
        if matches!(err, ServerError::NoSpace) {
            raise_nospace(&*self.backend, &self.shared).await;
        }
        err
    }
}

/// etcd's quota check, made before a write is validated (`quotaKVServer` and
/// `quotaLeaseServer` wrap the validating servers): a write of `cost` that does not fit under
/// the backend quota raises the NOSPACE alarm and is refused with NOSPACE.
pub(crate) async fn check_quota<B: Backend>(
    backend: &B,
    shared: &Shared,
    cost: i64,
) -> Result<(), ServerError> {
    if backend.quota_allows(cost) {
        return Ok(());
    }
    raise_nospace(backend, shared).await;
    Err(ServerError::NoSpace)
}

/// Raises the NOSPACE alarm (durably, as etcd does) unless it is active already, so later
/// writes are refused until an operator disarms it.
async fn raise_nospace<B: Backend>(backend: &B, shared: &Shared) {
    if backend.no_space() {
        return;
    }
    let member_id = shared.config.member_id;
    let alarm = AlarmMember {
        member_id,
        alarm: AlarmType::Nospace as i32,
    };
    match backend.change_alarm(AlarmChange::Activate(alarm)).await {
        Ok(_) => warn!(member_id, "backend quota exceeded: NOSPACE alarm raised"),
        Err(e) => {
            error!(member_id, error = %e, "backend quota exceeded, but the NOSPACE alarm could not be saved")
        }
    }
}

#[tonic::async_trait]
impl<B: Backend> Kv for KvService<B> {
    #[instrument(skip_all, name = "kv.range")]
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let view = self.backend.auth_view();
        let caller = caller_of(&request, &self.shared, &view)?;
        let req = request.into_inner();
        let on = target(&view, &req.key, &req.range_end);
        debug!(
            key_len = req.key.len(),
            range_end_len = req.range_end.len(),
            limit = req.limit,
            revision = req.revision,
            "range"
        );
        validate::range(&req)?;
        let sort_check = validate::range_sort_target(&req);
        let mut resp = self
            .backend
            .range(&caller, req)
            .await
            .map_err(|e| refused(&caller, "range", &on, e.into()))?;
        // etcd finds a bad sort target only after the read (revision errors come first).
        sort_check?;
        self.shared.stamp(&mut resp.header);
        validate::response_size(&resp, self.shared.config.max_response_bytes)?;
        debug!(kvs = resp.kvs.len(), count = resp.count, "range done");
        Ok(Response::new(resp))
    }

    #[instrument(skip_all, name = "kv.put")]
    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let view = self.backend.auth_view();
        let caller = caller_of(&request, &self.shared, &view)?;
        let req = request.into_inner();
        let on = target(&view, &req.key, b"");
        debug!(
            key_len = req.key.len(),
            value_len = req.value.len(),
            lease = req.lease,
            "put"
        );
        check_quota(&*self.backend, &self.shared, quota::put_cost(&req)).await?;
        validate::put(&req)?;
        validate::request_size(&req, self.shared.config.max_request_bytes)?;
        // The alarm is checked where etcd's applier checks it: after validation.
        if self.backend.no_space() {
            return Err(ServerError::NoSpace.into());
        }
        let mut resp = match self.backend.put(&caller, req).await {
            Ok(r) => r,
            Err(e) => return Err(refused(&caller, "put", &on, self.failed(e).await).into()),
        };
        self.shared.stamp(&mut resp.header);
        Ok(Response::new(resp))
    }

    #[instrument(skip_all, name = "kv.delete_range")]
    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let view = self.backend.auth_view();
        let caller = caller_of(&request, &self.shared, &view)?;
        let req = request.into_inner();
        let on = target(&view, &req.key, &req.range_end);
        debug!(
            key_len = req.key.len(),
            range_end_len = req.range_end.len(),
            "delete_range"
        );
        validate::delete_range(&req)?;
        validate::request_size(&req, self.shared.config.max_request_bytes)?;
        let mut resp = self
            .backend
            .delete_range(&caller, req)
            .await
            .map_err(|e| refused(&caller, "delete_range", &on, e.into()))?;
        self.shared.stamp(&mut resp.header);
        debug!(deleted = resp.deleted, "delete_range done");
        Ok(Response::new(resp))
    }

    #[instrument(skip_all, name = "kv.txn")]
    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let view = self.backend.auth_view();
        let caller = caller_of(&request, &self.shared, &view)?;
        let req = request.into_inner();
        debug!(
            compares = req.compare.len(),
            success = req.success.len(),
            failure = req.failure.len(),
            "txn"
        );
        check_quota(&*self.backend, &self.shared, quota::txn_cost(&req)).await?;
        validate::txn(&req, self.shared.config.max_txn_ops)?;
        if !validate::txn_is_read_only(&req) {
            validate::request_size(&req, self.shared.config.max_request_bytes)?;
        }
        if self.backend.no_space() && validate::txn_has_put(&req) {
            return Err(ServerError::NoSpace.into());
        }
        let mut resp = match self.backend.txn(&caller, req).await {
            Ok(r) => r,
            Err(e) => return Err(refused(&caller, "txn", &None, self.failed(e).await).into()),
        };
        self.shared.stamp(&mut resp.header);
        validate::response_size(&resp, self.shared.config.max_response_bytes)?;
        debug!(succeeded = resp.succeeded, "txn done");
        Ok(Response::new(resp))
    }

    #[instrument(skip_all, name = "kv.compact")]
    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        // Compact needs no permission (etcd checks none), but a bad token is still refused.
        caller_of(&request, &self.shared, &self.backend.auth_view())?;
        let req = request.into_inner();
        debug!(revision = req.revision, physical = req.physical, "compact");
        validate::request_size(&req, self.shared.config.max_request_bytes)?;
        let mut resp = self.backend.compact(req).await.map_err(ServerError::from)?;
        self.shared.stamp(&mut resp.header);
        Ok(Response::new(resp))
    }
}
