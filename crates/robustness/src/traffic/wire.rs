//! From the history's requests to etcd's gRPC messages and back: one call per [`Request`], its
//! answer turned into a [`Response`], its error classified as a definite failure or an
//! uncertain outcome.

use coffer_proto::compare::{CompareResult, CompareTarget, TargetUnion};
use coffer_proto::kv_client::KvClient;
use coffer_proto::lease_client::LeaseClient;
use coffer_proto::request_op::Request as OpRequest;
use coffer_proto::response_op::Response as OpResponse;
use coffer_proto::{
    CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest,
    RangeRequest, RequestOp, ResponseHeader, TxnRequest,
};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::history::{
    Compare, EventKind, KeyValue, Outcome, Request, Response, TxnOp, TxnOpResult, WatchEvent,
};

/// The clients one traffic client needs, on one connection.
#[derive(Debug, Clone)]
pub struct Clients {
    kv: KvClient<Channel>,
    lease: LeaseClient<Channel>,
    nospace_uncertain: bool,
}

impl Clients {
    /// Clients on `channel`.
    pub fn new(channel: Channel) -> Self {
        Clients {
            kv: KvClient::new(channel.clone()),
            lease: LeaseClient::new(channel),
            nospace_uncertain: false,
        }
    }

    /// Records `database space exceeded` as an uncertain outcome rather than a failure: etcd
    /// applies a write that crosses the quota and still answers NOSPACE (etcd-io/etcd#16659,
    /// documented upstream as intended), so on etcd that answer does not mean "not applied".
    pub fn with_nospace_uncertain(mut self, on: bool) -> Self {
        self.nospace_uncertain = on;
        self
    }

    /// Sends `req` and returns what came back (no deadline: the caller adds one).
    pub async fn execute(&mut self, req: &Request) -> Outcome {
        match self.call(req).await {
            Ok(resp) => Outcome::Ok(resp),
            Err(status) => match classify(&status) {
                Outcome::Failed(msg) if self.nospace_uncertain && is_nospace(&msg) => {
                    Outcome::Unknown(format!("{msg} (may have been applied: etcd-io/etcd#16659)"))
                }
                other => other,
            },
        }
    }

    async fn call(&mut self, req: &Request) -> Result<Response, Status> {
        Ok(match req {
            Request::Put { key, value, lease } => {
                let r = self
                    .kv
                    .put(PutRequest {
                        key: key.clone().into_bytes(),
                        value: value.clone().into_bytes(),
                        lease: *lease,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                Response::Put {
                    revision: rev(r.header),
                }
            }
            Request::Range { key, end } => {
                let r = self
                    .kv
                    .range(range(key, end.as_deref()))
                    .await?
                    .into_inner();
                Response::Range {
                    revision: rev(r.header),
                    kvs: r.kvs.iter().map(kv).collect(),
                }
            }
            Request::Delete { key } => {
                let r = self.kv.delete_range(delete(key)).await?.into_inner();
                Response::Delete {
                    revision: rev(r.header),
                    deleted: r.deleted,
                }
            }
            Request::Txn {
                compares,
                success,
                failure,
            } => {
                let r = self
                    .kv
                    .txn(TxnRequest {
                        compare: compares.iter().map(compare).collect(),
                        success: success.iter().map(op).collect(),
                        failure: failure.iter().map(op).collect(),
                    })
                    .await?
                    .into_inner();
                let results = r
                    .responses
                    .into_iter()
                    .map(|o| match o.response {
                        Some(OpResponse::ResponsePut(_)) => TxnOpResult::Put,
                        Some(OpResponse::ResponseRange(g)) => TxnOpResult::Get {
                            kvs: g.kvs.iter().map(kv).collect(),
                        },
                        Some(OpResponse::ResponseDeleteRange(d)) => {
                            TxnOpResult::Delete { deleted: d.deleted }
                        }
                        // Nested txns are never sent; an empty op answers nothing.
                        Some(OpResponse::ResponseTxn(_)) | None => TxnOpResult::Put,
                    })
                    .collect();
                Response::Txn {
                    revision: rev(r.header),
                    succeeded: r.succeeded,
                    results,
                }
            }
            Request::LeaseGrant { ttl } => {
                let r = self
                    .lease
                    .lease_grant(LeaseGrantRequest { ttl: *ttl, id: 0 })
                    .await?
                    .into_inner();
                if !r.error.is_empty() {
                    return Err(Status::unknown(r.error));
                }
                Response::LeaseGrant {
                    revision: rev(r.header),
                    id: r.id,
                }
            }
            Request::LeaseRevoke { id } => {
                let r = self
                    .lease
                    .lease_revoke(LeaseRevokeRequest { id: *id })
                    .await?
                    .into_inner();
                Response::LeaseRevoke {
                    revision: rev(r.header),
                }
            }
            Request::Compact { revision } => {
                let r = self
                    .kv
                    .compact(CompactionRequest {
                        revision: *revision,
                        physical: false,
                    })
                    .await?
                    .into_inner();
                Response::Compact {
                    revision: rev(r.header),
                }
            }
        })
    }
}

/// An error answer as an outcome: errors that say the request was refused before it was
/// applied are [`Outcome::Failed`]; everything else (unavailable, timeouts, broken
/// connections, unknown errors) leaves the outcome open: [`Outcome::Unknown`].
pub fn classify(status: &Status) -> Outcome {
    let msg = status.message().to_string();
    match status.code() {
        Code::OutOfRange
        | Code::NotFound
        | Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::Unauthenticated => Outcome::Failed(msg),
        Code::ResourceExhausted if is_nospace(&msg) => Outcome::Failed(msg),
        // Coffer's full-disk guard refuses a write before it reaches the log or the engine.
        Code::ResourceExhausted if msg.contains("no space left on the data directory's disk") => {
            Outcome::Failed(msg)
        }
        // Coffer refuses a write whose KMS plugin is unavailable before it reaches the log.
        Code::Unavailable if msg.starts_with("coffer: KMS provider") => Outcome::Failed(msg),
        code => Outcome::Unknown(format!("{code:?}: {msg}")),
    }
}

/// Whether an error message is the quota alarm's (`mvcc: database space exceeded`).
pub fn is_nospace(msg: &str) -> bool {
    msg.contains("database space exceeded")
}

fn rev(h: Option<ResponseHeader>) -> i64 {
    h.map(|h| h.revision).unwrap_or(0)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A key-value as the history records it.
pub fn kv(k: &coffer_proto::KeyValue) -> KeyValue {
    KeyValue {
        key: text(&k.key),
        value: text(&k.value),
        create_revision: k.create_revision,
        mod_revision: k.mod_revision,
        version: k.version,
        lease: k.lease,
    }
}

/// A watch event as the history records it.
pub fn event(e: &coffer_proto::Event, response_revision: i64) -> WatchEvent {
    WatchEvent {
        response_revision,
        kind: if e.r#type == 1 {
            EventKind::Delete
        } else {
            EventKind::Put
        },
        kv: e.kv.as_ref().map(kv).unwrap_or(KeyValue {
            key: String::new(),
            value: String::new(),
            create_revision: 0,
            mod_revision: 0,
            version: 0,
            lease: 0,
        }),
        prev_kv: e.prev_kv.as_ref().map(kv),
    }
}

fn range(key: &str, end: Option<&str>) -> RangeRequest {
    RangeRequest {
        key: key.as_bytes().to_vec(),
        range_end: end.map(|e| e.as_bytes().to_vec()).unwrap_or_default(),
        ..Default::default()
    }
}

fn delete(key: &str) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn compare(c: &Compare) -> coffer_proto::Compare {
    match c {
        Compare::ModRevisionEquals { key, revision } => coffer_proto::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Mod as i32,
            key: key.as_bytes().to_vec(),
            range_end: Vec::new(),
            target_union: Some(TargetUnion::ModRevision(*revision)),
        },
        Compare::ValueEquals { key, value } => coffer_proto::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Value as i32,
            key: key.as_bytes().to_vec(),
            range_end: Vec::new(),
            target_union: Some(TargetUnion::Value(value.as_bytes().to_vec())),
        },
    }
}

fn op(o: &TxnOp) -> RequestOp {
    let request = match o {
        TxnOp::Put { key, value } => OpRequest::RequestPut(PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        }),
        TxnOp::Get { key } => OpRequest::RequestRange(range(key, None)),
        TxnOp::Delete { key } => OpRequest::RequestDeleteRange(delete(key)),
    };
    RequestOp {
        request: Some(request),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definite_and_uncertain_errors() {
        let failed = |s: Status| matches!(classify(&s), Outcome::Failed(_));
        assert!(failed(Status::out_of_range(
            "etcdserver: mvcc: required revision has been compacted"
        )));
        assert!(failed(Status::resource_exhausted(
            "etcdserver: mvcc: database space exceeded"
        )));
        assert!(failed(Status::not_found(
            "etcdserver: requested lease not found"
        )));
        assert!(!failed(Status::resource_exhausted(
            "etcdserver: too many requests"
        )));
        assert!(!failed(Status::unavailable(
            "etcdserver: request timed out"
        )));
        assert!(!failed(Status::unknown("transport error")));
        assert!(!failed(Status::deadline_exceeded("deadline")));
    }
}
