//! etcd's requests and responses as JSON values, for transcripts that two servers' answers can be
//! compared on and that read well in a diff.
//!
//! Normalization happens here: response headers keep only `revision` (`cluster_id`, `member_id`
//! and `raft_term` differ between any two clusters); byte strings print as text when they are
//! printable UTF-8, else as hex, and long ones as their length plus a hash; gRPC errors become
//! `{"error": {"code", "message"}}`.

use coffer_proto::mvccpb::KeyValue;
use coffer_proto::{
    compare, request_op, response_op, CompactionRequest, CompactionResponse, Compare,
    DeleteRangeRequest, DeleteRangeResponse, MemberListResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp, StatusResponse, TxnRequest,
    TxnResponse, WatchCreateRequest, WatchResponse,
};
use serde_json::{json, Map, Value};

/// Byte strings longer than this are summarised.
const MAX_SHOWN: usize = 200;

/// Bytes as text (printable UTF-8), hex (`"0x..."`), or a summary for long values.
pub fn bytes(b: &[u8]) -> Value {
    if b.len() > MAX_SHOWN {
        return Value::String(format!("<{} bytes, fnv1a {:016x}>", b.len(), fnv1a(b)));
    }
    match std::str::from_utf8(b) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => Value::String(s.to_string()),
        _ => Value::String(format!("0x{}", hex(b))),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn fnv1a(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in b {
        h ^= u64::from(*x);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A gRPC error: code name and exact message.
pub fn status(s: &tonic::Status) -> Value {
    json!({"error": {"code": format!("{:?}", s.code()), "message": s.message()}})
}

/// A response header without the cluster-specific ids; `null` when absent.
pub fn header(h: &Option<ResponseHeader>) -> Value {
    match h {
        None => Value::Null,
        Some(h) => json!({"revision": h.revision}),
    }
}

/// A KeyValue with every field.
pub fn kv(k: &KeyValue) -> Value {
    json!({
        "key": bytes(&k.key),
        "create_revision": k.create_revision,
        "mod_revision": k.mod_revision,
        "version": k.version,
        "value": bytes(&k.value),
        "lease": k.lease,
    })
}

fn opt_kv(k: &Option<KeyValue>) -> Value {
    k.as_ref().map(kv).unwrap_or(Value::Null)
}

/// Adds `name: value` only when the value differs from the protobuf default, so requests print
/// short.
fn put_nonzero(m: &mut Map<String, Value>, name: &str, v: Value) {
    let is_default = match &v {
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_i64() == Some(0) || n.as_u64() == Some(0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Null => true,
        Value::Object(_) => false,
    };
    if !is_default {
        m.insert(name.to_string(), v);
    }
}

/// A RangeRequest (non-default fields only).
pub fn range_request(r: &RangeRequest) -> Value {
    let mut m = Map::new();
    m.insert("key".into(), bytes(&r.key));
    put_nonzero(&mut m, "range_end", bytes(&r.range_end));
    put_nonzero(&mut m, "limit", r.limit.into());
    put_nonzero(&mut m, "revision", r.revision.into());
    put_nonzero(&mut m, "sort_order", r.sort_order.into());
    put_nonzero(&mut m, "sort_target", r.sort_target.into());
    put_nonzero(&mut m, "serializable", r.serializable.into());
    put_nonzero(&mut m, "keys_only", r.keys_only.into());
    put_nonzero(&mut m, "count_only", r.count_only.into());
    put_nonzero(&mut m, "min_mod_revision", r.min_mod_revision.into());
    put_nonzero(&mut m, "max_mod_revision", r.max_mod_revision.into());
    put_nonzero(&mut m, "min_create_revision", r.min_create_revision.into());
    put_nonzero(&mut m, "max_create_revision", r.max_create_revision.into());
    Value::Object(m)
}

/// A PutRequest (non-default fields only).
pub fn put_request(r: &PutRequest) -> Value {
    let mut m = Map::new();
    m.insert("key".into(), bytes(&r.key));
    put_nonzero(&mut m, "value", bytes(&r.value));
    put_nonzero(&mut m, "lease", r.lease.into());
    put_nonzero(&mut m, "prev_kv", r.prev_kv.into());
    put_nonzero(&mut m, "ignore_value", r.ignore_value.into());
    put_nonzero(&mut m, "ignore_lease", r.ignore_lease.into());
    Value::Object(m)
}

/// A DeleteRangeRequest (non-default fields only).
pub fn delete_request(r: &DeleteRangeRequest) -> Value {
    let mut m = Map::new();
    m.insert("key".into(), bytes(&r.key));
    put_nonzero(&mut m, "range_end", bytes(&r.range_end));
    put_nonzero(&mut m, "prev_kv", r.prev_kv.into());
    Value::Object(m)
}

fn compare_json(c: &Compare) -> Value {
    let mut m = Map::new();
    m.insert("key".into(), bytes(&c.key));
    m.insert("target".into(), c.target.into());
    m.insert("result".into(), c.result.into());
    put_nonzero(&mut m, "range_end", bytes(&c.range_end));
    let operand = match &c.target_union {
        None => Value::Null,
        Some(compare::TargetUnion::Version(v)) => json!({"version": v}),
        Some(compare::TargetUnion::CreateRevision(v)) => json!({"create_revision": v}),
        Some(compare::TargetUnion::ModRevision(v)) => json!({"mod_revision": v}),
        Some(compare::TargetUnion::Value(v)) => json!({"value": bytes(v)}),
        Some(compare::TargetUnion::Lease(v)) => json!({"lease": v}),
    };
    m.insert("operand".into(), operand);
    Value::Object(m)
}

fn request_op_json(op: &RequestOp) -> Value {
    match &op.request {
        None => json!({"empty": true}),
        Some(request_op::Request::RequestRange(r)) => json!({"range": range_request(r)}),
        Some(request_op::Request::RequestPut(r)) => json!({"put": put_request(r)}),
        Some(request_op::Request::RequestDeleteRange(r)) => json!({"delete": delete_request(r)}),
        Some(request_op::Request::RequestTxn(r)) => json!({"txn": txn_request(r)}),
    }
}

/// A TxnRequest.
pub fn txn_request(t: &TxnRequest) -> Value {
    json!({
        "compare": t.compare.iter().map(compare_json).collect::<Vec<_>>(),
        "success": t.success.iter().map(request_op_json).collect::<Vec<_>>(),
        "failure": t.failure.iter().map(request_op_json).collect::<Vec<_>>(),
    })
}

/// A CompactionRequest.
pub fn compact_request(c: &CompactionRequest) -> Value {
    json!({"revision": c.revision, "physical": c.physical})
}

/// A RangeResponse.
pub fn range_response(r: &RangeResponse) -> Value {
    json!({
        "header": header(&r.header),
        "kvs": r.kvs.iter().map(kv).collect::<Vec<_>>(),
        "more": r.more,
        "count": r.count,
    })
}

/// A PutResponse.
pub fn put_response(r: &PutResponse) -> Value {
    json!({"header": header(&r.header), "prev_kv": opt_kv(&r.prev_kv)})
}

/// A DeleteRangeResponse.
pub fn delete_response(r: &DeleteRangeResponse) -> Value {
    json!({
        "header": header(&r.header),
        "deleted": r.deleted,
        "prev_kvs": r.prev_kvs.iter().map(kv).collect::<Vec<_>>(),
    })
}

fn response_op_json(op: &ResponseOp) -> Value {
    match &op.response {
        None => json!({"empty": true}),
        Some(response_op::Response::ResponseRange(r)) => json!({"range": range_response(r)}),
        Some(response_op::Response::ResponsePut(r)) => json!({"put": put_response(r)}),
        Some(response_op::Response::ResponseDeleteRange(r)) => {
            json!({"delete": delete_response(r)})
        }
        Some(response_op::Response::ResponseTxn(r)) => json!({"txn": txn_response(r)}),
    }
}

/// A TxnResponse, nested responses included.
pub fn txn_response(t: &TxnResponse) -> Value {
    json!({
        "header": header(&t.header),
        "succeeded": t.succeeded,
        "responses": t.responses.iter().map(response_op_json).collect::<Vec<_>>(),
    })
}

/// A CompactionResponse.
pub fn compact_response(r: &CompactionResponse) -> Value {
    json!({"header": header(&r.header)})
}

/// A WatchCreateRequest (non-default fields only).
pub fn watch_create_request(r: &WatchCreateRequest) -> Value {
    let mut m = Map::new();
    m.insert("key".into(), bytes(&r.key));
    put_nonzero(&mut m, "range_end", bytes(&r.range_end));
    put_nonzero(&mut m, "start_revision", r.start_revision.into());
    put_nonzero(&mut m, "progress_notify", r.progress_notify.into());
    put_nonzero(&mut m, "filters", json!(r.filters));
    put_nonzero(&mut m, "prev_kv", r.prev_kv.into());
    put_nonzero(&mut m, "watch_id", r.watch_id.into());
    put_nonzero(&mut m, "fragment", r.fragment.into());
    Value::Object(m)
}

/// A watch event: `PUT`/`DELETE`, the kv and the prev_kv (`null` when absent).
pub fn watch_event(e: &coffer_proto::mvccpb::Event) -> Value {
    let kind = match e.r#type {
        0 => Value::from("PUT"),
        1 => Value::from("DELETE"),
        other => Value::from(other),
    };
    json!({"type": kind, "kv": opt_kv(&e.kv), "prev_kv": opt_kv(&e.prev_kv)})
}

/// A WatchResponse with every field (header reduced to its revision).
pub fn watch_response(r: &WatchResponse) -> Value {
    json!({
        "header": header(&r.header),
        "watch_id": r.watch_id,
        "created": r.created,
        "canceled": r.canceled,
        "compact_revision": r.compact_revision,
        "cancel_reason": r.cancel_reason,
        "fragment": r.fragment,
        "events": r.events.iter().map(watch_event).collect::<Vec<_>>(),
    })
}

/// A StatusResponse with the fields two healthy single members share: sizes and raft indexes
/// are reduced to "is positive", the leader to "is this member".
pub fn status_response(r: &StatusResponse) -> Value {
    let member = r.header.as_ref().map(|h| h.member_id).unwrap_or(0);
    json!({
        "header": header(&r.header),
        "version": r.version,
        "db_size_positive": r.db_size > 0,
        "db_size_in_use_positive": r.db_size_in_use > 0,
        "leader_is_self": r.leader != 0 && r.leader == member,
        "raft_index_positive": r.raft_index > 0,
        "raft_term_positive": r.raft_term > 0,
        "errors": r.errors,
        "is_learner": r.is_learner,
    })
}

/// A MemberListResponse: each member with its id checked against the header's member id and
/// its URLs with the ports replaced by `<client>` / `<port>`.
pub fn member_list_response(r: &MemberListResponse, client_endpoint: &str) -> Value {
    let header_member = r.header.as_ref().map(|h| h.member_id);
    let members: Vec<Value> = r
        .members
        .iter()
        .map(|m| {
            json!({
                "id_nonzero": m.id != 0,
                "id_matches_header": header_member == Some(m.id),
                "name": m.name,
                // A single member's peer URLs mean nothing to clients (etcd shows its configured
                // one, Coffer a default like etcd's); only their presence is compared.
                "peer_urls_nonempty": !m.peer_ur_ls.is_empty(),
                "client_urls": m.client_ur_ls.iter().map(|u| mask_url(u, client_endpoint)).collect::<Vec<_>>(),
                "is_learner": m.is_learner,
            })
        })
        .collect();
    json!({"header": header(&r.header), "members": members})
}

/// `http://127.0.0.1:2379` → `<client>` when it is the client endpoint, else the port replaced
/// by `<port>`.
pub fn mask_url(u: &str, client_endpoint: &str) -> String {
    if u == client_endpoint {
        return "<client>".into();
    }
    match u.rfind(':') {
        Some(i) if u[i + 1..].chars().all(|c| c.is_ascii_digit()) => {
            format!("{}:<port>", &u[..i])
        }
        _ => u.to_string(),
    }
}

/// Removes `cluster_id`, `member_id` and `raft_term` keys (any depth) from etcdctl's JSON
/// output, and replaces the given endpoint strings by `<client>`.
pub fn normalize_etcdctl(v: &mut Value, client_endpoint: &str) {
    match v {
        Value::Object(m) => {
            m.remove("cluster_id");
            m.remove("member_id");
            m.remove("raft_term");
            for (_, x) in m.iter_mut() {
                normalize_etcdctl(x, client_endpoint);
            }
        }
        Value::Array(a) => {
            for x in a {
                normalize_etcdctl(x, client_endpoint);
            }
        }
        Value::String(s) if s.contains(client_endpoint) => {
            *s = s.replace(client_endpoint, "<client>");
        }
        _ => {}
    }
}
