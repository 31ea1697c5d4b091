//! The quota alarm (NOSPACE), side by side: the same scenario against a fresh Debian etcd
//! 3.4.23 and a fresh `coffer serve`, both started with a 1 MiB `--quota-backend-bytes`:
//! fill until a put fails, check what is refused and what still works while the alarm is
//! active, SIGKILL and restart (the alarm must survive: etcd keeps it in its `alarm` bucket),
//! then delete, compact, defragment and disarm, after which writes work again. The answers are
//! compared; the number of puts before the quota is reached differs (the two engines grow their
//! files differently) and is only checked to be reached. The order of the checks is etcd's:
//! a write that does not fit under the quota is refused before it is validated, while the
//! alarm alone refuses writes only after validation.
//!
//! Run: `cargo build -p coffer && cargo test -p coffer-conformance --test quota`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use coffer_conformance::client::connect;
use coffer_conformance::process::{CofferOptions, CofferProcess, EtcdOptions, EtcdProcess};
use coffer_proto::alarm_request::AlarmAction;
use coffer_proto::kv_client::KvClient;
use coffer_proto::lease_client::LeaseClient;
use coffer_proto::maintenance_client::MaintenanceClient;
use coffer_proto::request_op::Request;
use coffer_proto::{
    AlarmRequest, AlarmType, CompactionRequest, DefragmentRequest, DeleteRangeRequest,
    LeaseGrantRequest, PutRequest, RangeRequest, RequestOp, StatusRequest, TxnRequest,
};
use serde_json::{json, Value};

const QUOTA: &str = "1048576";
const VALUE_SIZE: usize = 16 * 1024;

fn err(s: tonic::Status) -> Value {
    json!({"code": format!("{:?}", s.code()), "message": s.message()})
}

fn answer<T>(r: Result<tonic::Response<T>, tonic::Status>, ok: impl FnOnce(T) -> Value) -> Value {
    match r {
        Ok(r) => json!({"ok": ok(r.into_inner())}),
        Err(e) => json!({"error": err(e)}),
    }
}

/// A server of either kind, so the scenario can restart it.
enum Server {
    Etcd(EtcdProcess),
    Coffer(CofferProcess),
}

impl Server {
    fn endpoint(&self) -> String {
        match self {
            Server::Etcd(p) => p.endpoint(),
            Server::Coffer(p) => p.endpoint(),
        }
    }
    fn kill_and_restart(&mut self) {
        match self {
            Server::Etcd(p) => {
                p.kill();
                p.restart().unwrap();
            }
            Server::Coffer(p) => {
                p.kill();
                p.restart().unwrap();
            }
        }
    }
}

struct Clients {
    kv: KvClient<tonic::transport::Channel>,
    lease: LeaseClient<tonic::transport::Channel>,
    m: MaintenanceClient<tonic::transport::Channel>,
}

async fn clients(endpoint: &str) -> Clients {
    let ch = connect(endpoint).await.unwrap();
    Clients {
        kv: KvClient::new(ch.clone()),
        lease: LeaseClient::new(ch.clone()),
        m: MaintenanceClient::new(ch),
    }
}

fn put(key: &str, size: usize) -> PutRequest {
    PutRequest {
        key: key.as_bytes().to_vec(),
        value: vec![b'x'; size],
        ..Default::default()
    }
}

/// The alarms as (alarm name, member is this server) pairs, and the status errors with the
/// member id replaced.
async fn alarms(c: &mut Clients) -> Value {
    let st = c.m.status(StatusRequest {}).await.unwrap().into_inner();
    let list =
        c.m.alarm(AlarmRequest {
            action: AlarmAction::Get as i32,
            member_id: 0,
            alarm: AlarmType::None as i32,
        })
        .await
        .unwrap()
        .into_inner();
    let list: Vec<Value> = list
        .alarms
        .iter()
        .map(|a| {
            json!([
                AlarmType::try_from(a.alarm)
                    .map(|t| t.as_str_name())
                    .unwrap_or("?"),
                a.member_id == st.leader
            ])
        })
        .collect();
    let errors: Vec<String> = st
        .errors
        .iter()
        .map(|e| e.replace(&st.leader.to_string(), "<member>"))
        .collect();
    json!({"alarms": list, "status_errors": errors})
}

/// Checks what the active alarm refuses and allows; every answer goes into `t`.
async fn while_alarmed(c: &mut Clients, t: &mut Vec<(String, Value)>, when: &str) {
    t.push((format!("{when}: alarms"), alarms(c).await));
    t.push((
        format!("{when}: small put"),
        answer(c.kv.put(put("/small", 1)).await, |_| json!("put")),
    ));
    let txn_put = TxnRequest {
        success: vec![RequestOp {
            request: Some(Request::RequestPut(put("/t", 1))),
        }],
        ..Default::default()
    };
    t.push((
        format!("{when}: txn with a put"),
        answer(c.kv.txn(txn_put).await, |r| json!(r.succeeded)),
    ));
    let txn_read = TxnRequest {
        success: vec![RequestOp {
            request: Some(Request::RequestRange(RangeRequest {
                key: b"/fill/0000".to_vec(),
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    t.push((
        format!("{when}: read-only txn"),
        answer(c.kv.txn(txn_read).await, |r| json!(r.succeeded)),
    ));
    // Over the quota, etcd refuses before it validates: NOSPACE, not "key is not provided".
    t.push((
        format!("{when}: put over the quota with an empty key"),
        answer(c.kv.put(put("", VALUE_SIZE)).await, |_| json!("put")),
    ));
    let txn_bad = TxnRequest {
        success: vec![RequestOp {
            request: Some(Request::RequestPut(put("", VALUE_SIZE))),
        }],
        ..Default::default()
    };
    t.push((
        format!("{when}: txn over the quota with an empty key"),
        answer(c.kv.txn(txn_bad).await, |r| json!(r.succeeded)),
    ));
    t.push((
        format!("{when}: lease grant"),
        answer(
            c.lease
                .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
                .await,
            |_| json!("granted"),
        ),
    ));
    t.push((
        format!("{when}: count"),
        answer(
            c.kv.range(RangeRequest {
                key: b"/fill/".to_vec(),
                range_end: b"/fill0".to_vec(),
                count_only: true,
                ..Default::default()
            })
            .await,
            |r| json!(r.count > 0),
        ),
    ));
}

async fn scenario(server: &mut Server) -> Vec<(String, Value)> {
    let mut t = Vec::new();
    let mut c = clients(&server.endpoint()).await;
    t.push(("fresh: alarms".into(), alarms(&mut c).await));

    // Fill until the quota refuses a put.
    let mut first_error = None;
    for i in 0..2000 {
        match c.kv.put(put(&format!("/fill/{i:04}"), VALUE_SIZE)).await {
            Ok(_) => {}
            Err(e) => {
                first_error = Some((i, e));
                break;
            }
        }
    }
    let (puts, e) = first_error.expect("2000 puts of 16 KiB never hit a 1 MiB quota");
    assert!(puts > 10, "the quota was hit after only {puts} puts");
    t.push(("the put over the quota".into(), err(e)));
    while_alarmed(&mut c, &mut t, "alarmed").await;

    // The alarm survives a crash.
    server.kill_and_restart();
    let mut c = clients(&server.endpoint()).await;
    while_alarmed(&mut c, &mut t, "after restart").await;

    // The operator's way out: delete, compact, defragment, disarm.
    let del =
        c.kv.delete_range(DeleteRangeRequest {
            key: b"/".to_vec(),
            range_end: b"0".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    t.push(("delete all".into(), json!(del.deleted > 10)));
    let rev = del.header.unwrap().revision;
    t.push((
        "compact".into(),
        answer(
            c.kv.compact(CompactionRequest {
                revision: rev,
                physical: true,
            })
            .await,
            |_| json!("compacted"),
        ),
    ));
    t.push((
        "defragment".into(),
        answer(c.m.defragment(DefragmentRequest {}).await, |_| {
            json!("done")
        }),
    ));
    // Under the quota again but still alarmed: validation comes first, then the alarm.
    t.push((
        "defragmented, alarmed: put with an empty key".into(),
        answer(c.kv.put(put("", 1)).await, |_| json!("put")),
    ));
    t.push((
        "defragmented, alarmed: small put".into(),
        answer(c.kv.put(put("/small", 1)).await, |_| json!("put")),
    ));
    let leader =
        c.m.status(StatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .leader;
    let disarm =
        c.m.alarm(AlarmRequest {
            action: AlarmAction::Deactivate as i32,
            member_id: leader,
            alarm: AlarmType::Nospace as i32,
        })
        .await
        .unwrap()
        .into_inner();
    t.push((
        "disarm answers the alarm it cleared".into(),
        json!(disarm
            .alarms
            .iter()
            .map(|a| (a.alarm, a.member_id == leader))
            .collect::<Vec<_>>()),
    ));
    t.push(("disarmed: alarms".into(), alarms(&mut c).await));
    t.push((
        "disarmed: put".into(),
        answer(c.kv.put(put("/again", 100)).await, |_| json!("put")),
    ));
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nospace_alarm_refuses_writes_survives_restart_and_disarms_like_etcd() {
    let quota = vec!["--quota-backend-bytes".to_string(), QUOTA.to_string()];
    let mut etcd = Server::Etcd(
        EtcdProcess::start_with(EtcdOptions {
            extra_args: quota.clone(),
            ..Default::default()
        })
        .unwrap(),
    );
    let mut coffer = Server::Coffer(
        CofferProcess::start(CofferOptions {
            extra_args: quota,
            ..Default::default()
        })
        .unwrap(),
    );
    let want = scenario(&mut etcd).await;
    let got = scenario(&mut coffer).await;
    // Sanity: the scenario saw the alarm at all (on etcd, the reference).
    let alarmed = &want.iter().find(|(l, _)| l == "alarmed: alarms").unwrap().1;
    assert_eq!(alarmed["alarms"], json!([["NOSPACE", true]]), "{want:#?}");
    for ((wl, w), (gl, g)) in want.iter().zip(&got) {
        assert_eq!(wl, gl);
        assert_eq!(g, w, "step {wl:?}: coffer answered {g}, etcd answered {w}");
    }
    assert_eq!(want.len(), got.len());
}
