//! `etcdserverpb.Lease`: LeaseGrant, LeaseRevoke, LeaseKeepAlive (stream), LeaseTimeToLive,
//! LeaseLeases.
//!
//! Translation only: the store keeps the leases, persists them, attaches keys and revokes
//! expired leases ([`coffer_store::lease`]). Etcd's answers for unknown leases are kept: a
//! keep-alive gets `TTL=0` (not an error), TimeToLive gets `TTL=-1` with success, Revoke gets
//! `requested lease not found`.

use std::pin::Pin;
use std::sync::Arc;

use coffer_proto::lease_server::Lease;
use coffer_proto::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use coffer_store::{quota, Backend};
use futures::Stream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, instrument};

use crate::caller::{caller_of, refused};
use crate::errors::ServerError;
use crate::state::Shared;

/// The Lease service over a store `B`.
#[derive(Debug)]
pub struct LeaseService<B> {
    backend: Arc<B>,
    shared: Arc<Shared>,
}

impl<B> LeaseService<B> {
    /// A Lease service over `backend`.
    pub fn new(backend: Arc<B>, shared: Arc<Shared>) -> Self {
        LeaseService { backend, shared }
    }
}

/// The response stream of one `LeaseKeepAlive` call.
pub type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

impl<B: Backend> LeaseService<B> {
    /// The current revision for a response header.
    async fn revision(&self) -> Result<i64, Status> {
        match self.backend.revision_now() {
            Some(r) => Ok(r),
            None => Ok(self
                .backend
                .status()
                .await
                .map_err(ServerError::from)?
                .revision),
        }
    }
}

#[tonic::async_trait]
impl<B: Backend> Lease for LeaseService<B> {
    #[instrument(skip_all, name = "lease.grant")]
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        caller_of(&request, &self.shared, &self.backend.auth_view())?;
        let req = request.into_inner();
        debug!(ttl = req.ttl, id = req.id, "lease grant");
        crate::kv::check_quota(&*self.backend, &self.shared, quota::LEASE_OVERHEAD).await?;
        if self.backend.no_space() {
            return Err(ServerError::NoSpace.into());
        }
        let mut resp = self
            .backend
            .lease_grant(req)
            .await
            .map_err(ServerError::from)?;
        self.shared.stamp(&mut resp.header);
        Ok(Response::new(resp))
    }

    #[instrument(skip_all, name = "lease.revoke")]
    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let caller = caller_of(&request, &self.shared, &self.backend.auth_view())?;
        let id = request.into_inner().id;
        debug!(id, "lease revoke");
        let mut resp = self
            .backend
            .lease_revoke(&caller, id)
            .await
            .map_err(|e| refused(&caller, "lease_revoke", &None, e.into()))?;
        self.shared.stamp(&mut resp.header);
        Ok(Response::new(resp))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    #[instrument(skip_all, name = "lease.keep_alive")]
    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        caller_of(&request, &self.shared, &self.backend.auth_view())?;
        let backend = Arc::clone(&self.backend);
        let shared = Arc::clone(&self.shared);
        let out = request.into_inner().map(move |req| {
            let req = req?;
            let mut resp = backend
                .lease_keep_alive(req.id)
                .map_err(ServerError::from)?;
            shared.stamp(&mut resp.header);
            Ok(resp)
        });
        Ok(Response::new(Box::pin(self.shared.until_stopped(out))))
    }

    #[instrument(skip_all, name = "lease.time_to_live")]
    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let caller = caller_of(&request, &self.shared, &self.backend.auth_view())?;
        let req = request.into_inner();
        let revision = self.revision().await?;
        let status = self
            .backend
            .lease_status(&caller, req.id, req.keys)
            .map_err(|e| refused(&caller, "lease_time_to_live", &None, e.into()))?;
        let resp = match status {
            Some(st) => LeaseTimeToLiveResponse {
                header: Some(self.shared.header(revision)),
                id: req.id,
                ttl: st.remaining,
                granted_ttl: st.granted_ttl,
                keys: if req.keys { st.keys } else { Vec::new() },
            },
            None => LeaseTimeToLiveResponse {
                header: Some(self.shared.header(revision)),
                id: req.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
        };
        Ok(Response::new(resp))
    }

    #[instrument(skip_all, name = "lease.leases")]
    async fn lease_leases(
        &self,
        request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        caller_of(&request, &self.shared, &self.backend.auth_view())?;
        let revision = self.revision().await?;
        let leases = self
            .backend
            .lease_ids()
            .into_iter()
            .map(|id| LeaseStatus { id })
            .collect();
        Ok(Response::new(LeaseLeasesResponse {
            header: Some(self.shared.header(revision)),
            leases,
        }))
    }
}
