//! The Rust side of a test: coffer-proto's tonic clients on one channel ([`Session`]), each call
//! recorded as a transcript step with its request and its normalized answer (or error).

use std::time::Duration;

use coffer_proto::cluster_client::ClusterClient;
use coffer_proto::kv_client::KvClient;
use coffer_proto::lease_client::LeaseClient;
use coffer_proto::maintenance_client::MaintenanceClient;
use coffer_proto::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    MemberListRequest, MemberListResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    StatusRequest, StatusResponse, TxnRequest, TxnResponse,
};
use serde_json::{json, Value};
use tonic::transport::{Channel, Endpoint};

use crate::json;
use crate::transcript::{Step, Transcript};
use crate::HarnessError;

/// Message size limit for our side: large enough to send a message etcd must refuse.
const CLIENT_MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Opens a channel to `endpoint` (`http://127.0.0.1:PORT`, or `https://` for one registered
/// with [`crate::tls::register`]).
pub async fn connect(endpoint: &str) -> Result<Channel, HarnessError> {
    let ep = Endpoint::from_shared(crate::tls::dial_uri(endpoint))
        .map_err(|e| HarnessError::Connect {
            endpoint: endpoint.to_string(),
            message: e.to_string(),
        })?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30));
    crate::tls::connect(endpoint, ep)
        .await
        .map_err(|e| HarnessError::Connect {
            endpoint: endpoint.to_string(),
            message: e.to_string(),
        })
}

/// Whether the server at `endpoint` answers a linearizable Range (or, if Range is not
/// implemented, Status). Blocking; safe to call from inside or outside a tokio runtime.
pub fn probe(endpoint: &str) -> bool {
    let endpoint = endpoint.to_string();
    let handle = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return false;
        };
        rt.block_on(async move {
            let fut = async {
                let Ok(ch) = connect(&endpoint).await else {
                    return false;
                };
                let mut kv = KvClient::new(ch.clone());
                let req = RangeRequest {
                    key: b"coffer-conformance-probe".to_vec(),
                    ..Default::default()
                };
                match kv.range(req).await {
                    Ok(_) => true,
                    // Auth is enabled and the probe names no user: the server is serving.
                    Err(s) if s.message() == "etcdserver: user name is empty" => true,
                    Err(s) if s.code() == tonic::Code::Unimplemented => MaintenanceClient::new(ch)
                        .status(StatusRequest {})
                        .await
                        .is_ok(),
                    Err(_) => false,
                }
            };
            tokio::time::timeout(Duration::from_secs(3), fut)
                .await
                .unwrap_or(false)
        })
    });
    handle.join().unwrap_or(false)
}

/// All the clients a scenario needs, on one channel, plus the transcript of what they did.
#[derive(Debug, Clone)]
pub struct Session {
    /// KV service.
    pub kv: KvClient<Channel>,
    /// Maintenance service.
    pub maintenance: MaintenanceClient<Channel>,
    /// Cluster service.
    pub cluster: ClusterClient<Channel>,
    /// Lease service.
    pub lease: LeaseClient<Channel>,
    /// The endpoint, for masking it in answers.
    pub endpoint: String,
    /// What happened so far.
    pub transcript: Transcript,
}

impl Session {
    /// Connects to `endpoint`.
    pub async fn connect(endpoint: &str) -> Result<Self, HarnessError> {
        let ch = connect(endpoint).await?;
        Ok(Session {
            kv: KvClient::new(ch.clone())
                .max_decoding_message_size(CLIENT_MAX_MESSAGE)
                .max_encoding_message_size(CLIENT_MAX_MESSAGE),
            maintenance: MaintenanceClient::new(ch.clone()),
            cluster: ClusterClient::new(ch.clone()),
            lease: LeaseClient::new(ch),
            endpoint: endpoint.to_string(),
            transcript: Transcript::default(),
        })
    }

    /// Records a step by hand (for values a scenario computes itself).
    pub fn record(&mut self, label: &str, request: Value, answer: Value) {
        self.transcript.steps.push(Step {
            label: label.to_string(),
            request,
            answer,
        });
    }

    fn record_result<T>(
        &mut self,
        label: &str,
        request: Value,
        r: &Result<tonic::Response<T>, tonic::Status>,
        f: impl Fn(&T) -> Value,
    ) {
        let answer = match r {
            Ok(resp) => f(resp.get_ref()),
            Err(s) => json::status(s),
        };
        self.record(label, request, answer);
    }

    /// Range, recorded.
    pub async fn range(&mut self, label: &str, req: RangeRequest) -> Option<RangeResponse> {
        let request = json!({"range": json::range_request(&req)});
        let r = self.kv.range(req).await;
        self.record_result(label, request, &r, json::range_response);
        r.ok().map(tonic::Response::into_inner)
    }

    /// Put, recorded.
    pub async fn put(&mut self, label: &str, req: PutRequest) -> Option<PutResponse> {
        let request = json!({"put": json::put_request(&req)});
        let r = self.kv.put(req).await;
        self.record_result(label, request, &r, json::put_response);
        r.ok().map(tonic::Response::into_inner)
    }

    /// DeleteRange, recorded.
    pub async fn delete(
        &mut self,
        label: &str,
        req: DeleteRangeRequest,
    ) -> Option<DeleteRangeResponse> {
        let request = json!({"delete": json::delete_request(&req)});
        let r = self.kv.delete_range(req).await;
        self.record_result(label, request, &r, json::delete_response);
        r.ok().map(tonic::Response::into_inner)
    }

    /// Txn, recorded.
    pub async fn txn(&mut self, label: &str, req: TxnRequest) -> Option<TxnResponse> {
        let request = json!({"txn": json::txn_request(&req)});
        let r = self.kv.txn(req).await;
        self.record_result(label, request, &r, json::txn_response);
        r.ok().map(tonic::Response::into_inner)
    }

    /// Compact, recorded.
    pub async fn compact(
        &mut self,
        label: &str,
        req: CompactionRequest,
    ) -> Option<CompactionResponse> {
        let request = json!({"compact": json::compact_request(&req)});
        let r = self.kv.compact(req).await;
        self.record_result(label, request, &r, json::compact_response);
        r.ok().map(tonic::Response::into_inner)
    }

    /// Maintenance.Status, recorded (normalized by [`json::status_response`]).
    pub async fn status(&mut self, label: &str) -> Option<StatusResponse> {
        let r = self.maintenance.status(StatusRequest {}).await;
        self.record_result(label, json!({"status": {}}), &r, json::status_response);
        r.ok().map(tonic::Response::into_inner)
    }

    /// Cluster.MemberList, recorded.
    pub async fn member_list(&mut self, label: &str) -> Option<MemberListResponse> {
        let r = self.cluster.member_list(MemberListRequest::default()).await;
        let ep = self.endpoint.clone();
        self.record_result(label, json!({"member_list": {}}), &r, |m| {
            json::member_list_response(m, &ep)
        });
        r.ok().map(tonic::Response::into_inner)
    }

    /// Shorthand: put `key` = `value`, recorded.
    pub async fn put_kv(&mut self, label: &str, key: &str, value: &str) -> Option<PutResponse> {
        self.put(
            label,
            PutRequest {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
                ..Default::default()
            },
        )
        .await
    }
}

impl Session {
    /// Runs etcdctl against this session's endpoint and records its normalized output.
    pub fn etcdctl(&mut self, label: &str, args: &[&str], stdin: Option<&str>) -> Value {
        let request = json!({"etcdctl": args, "stdin": stdin});
        let answer = match crate::etcdctl::run(&self.endpoint, args, stdin) {
            Ok(out) => out.normalized(&self.endpoint),
            Err(e) => json!({"harness_error": e.to_string()}),
        };
        self.record(label, request, answer.clone());
        answer
    }
}
