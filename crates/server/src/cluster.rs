//! `etcdserverpb.Cluster` for a single member. MemberList shows this member. MemberAdd is
//! refused with Coffer's own error (Coffer never grows beyond one member, so etcd's "not
//! enough started members" would suggest starting the new member would help); removing this
//! member fails as on a single etcd with strict reconfiguration checks, unknown IDs are
//! `member not found`, and this member is no learner to promote.

use std::sync::{Arc, Mutex};

use coffer_proto::{
    cluster_server::Cluster, Member, MemberAddRequest, MemberAddResponse, MemberListRequest,
    MemberListResponse, MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest,
    MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
};
use coffer_store::Backend;
use tonic::{Request, Response, Status};
use tracing::{info, instrument};

use crate::caller::{admin, caller_of};
use crate::errors::ServerError;
use crate::state::Shared;

/// The Cluster service.
#[derive(Debug)]
pub struct ClusterService<B> {
    backend: Arc<B>,
    shared: Arc<Shared>,
    peer_urls: Mutex<Vec<String>>,
}

impl<B> ClusterService<B> {
    /// A Cluster service for this member.
    pub fn new(backend: Arc<B>, shared: Arc<Shared>) -> Self {
        let peer_urls = Mutex::new(shared.config.peer_urls.clone());
        ClusterService {
            backend,
            shared,
            peer_urls,
        }
    }

    fn members(&self) -> Vec<Member> {
        let config = &self.shared.config;
        let peer_urls = self
            .peer_urls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        vec![Member {
            id: config.member_id,
            name: config.name.clone(),
            peer_ur_ls: peer_urls,
            client_ur_ls: config.advertise_client_urls.clone(),
            is_learner: false,
        }]
    }
}

/// etcd's `types.NewURLs`: at least one URL; each `http(s)://host:port` without a path, or
/// `unix(s)://...`.
fn valid_peer_urls(urls: &[String]) -> bool {
    !urls.is_empty() && urls.iter().all(|u| valid_peer_url(u.trim()))
}

fn valid_peer_url(url: &str) -> bool {
    if url.starts_with("unix://") || url.starts_with("unixs://") {
        return true;
    }
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return false;
    };
    // Query and fragment are allowed by Go's URL parser; the path must be empty.
    let host = rest.split(['?', '#']).next().unwrap_or("");
    if host.contains('/') {
        return false;
    }
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    match host.strip_prefix('[') {
        Some(v6) => v6
            .split_once("]:")
            .is_some_and(|(h, _)| !h.is_empty() && h.contains(':')),
        None => host.split(':').count() == 2,
    }
}

impl<B: Backend> ClusterService<B> {
    /// The store's current revision, for response headers.
    async fn revision(&self) -> Result<i64, Status> {
        Ok(self
            .backend
            .status()
            .await
            .map_err(ServerError::from)?
            .revision)
    }
}

#[tonic::async_trait]
impl<B: Backend> Cluster for ClusterService<B> {
    #[instrument(skip_all, name = "cluster.member_add")]
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        admin(
            &request,
            &self.shared,
            &self.backend.auth_view(),
            "member_add",
        )?;
        let req = request.into_inner();
        if !valid_peer_urls(&req.peer_ur_ls) {
            return Err(ServerError::MemberBadUrls.into());
        }
        Err(ServerError::CannotAddMembers.into())
    }

    #[instrument(skip_all, name = "cluster.member_remove")]
    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        admin(
            &request,
            &self.shared,
            &self.backend.auth_view(),
            "member_remove",
        )?;
        let req = request.into_inner();
        if req.id == self.shared.config.member_id {
            return Err(ServerError::MemberNotEnoughStarted.into());
        }
        Err(ServerError::MemberNotFound.into())
    }

    #[instrument(skip_all, name = "cluster.member_update")]
    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        admin(
            &request,
            &self.shared,
            &self.backend.auth_view(),
            "member_update",
        )?;
        let req = request.into_inner();
        if !valid_peer_urls(&req.peer_ur_ls) {
            return Err(ServerError::MemberBadUrls.into());
        }
        if req.id != self.shared.config.member_id {
            return Err(ServerError::MemberNotFound.into());
        }
        info!(
            urls = req.peer_ur_ls.len(),
            "peer URLs updated (kept in memory)"
        );
        *self.peer_urls.lock().unwrap_or_else(|p| p.into_inner()) = req.peer_ur_ls;
        let revision = self.revision().await?;
        Ok(Response::new(MemberUpdateResponse {
            header: Some(self.shared.header(revision)),
            members: self.members(),
        }))
    }

    #[instrument(skip_all, name = "cluster.member_list")]
    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        caller_of(&request, &self.shared, &self.backend.auth_view())?;
        let revision = self.revision().await?;
        Ok(Response::new(MemberListResponse {
            header: Some(self.shared.header(revision)),
            members: self.members(),
        }))
    }

    #[instrument(skip_all, name = "cluster.member_promote")]
    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        admin(
            &request,
            &self.shared,
            &self.backend.auth_view(),
            "member_promote",
        )?;
        let req = request.into_inner();
        if req.id != self.shared.config.member_id {
            return Err(ServerError::MemberNotFound.into());
        }
        Err(ServerError::MemberNotLearner.into())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn peer_url_rules() {
        let ok = |u: &str| valid_peer_urls(&[u.to_owned()]);
        assert!(ok("http://10.0.0.1:2380"));
        assert!(ok("https://host:2380"));
        assert!(ok("http://[::1]:2380"));
        assert!(ok("unix://sock"));
        assert!(ok(" http://a:1 "));
        assert!(!ok("http://10.0.0.1"));
        assert!(!ok("http://a:1/path"));
        assert!(!ok("ftp://a:1"));
        assert!(!ok("a:1"));
        assert!(!valid_peer_urls(&[]));
    }
}
