//! The side-by-side suite: each scenario sends the same requests to a fresh Debian etcd 3.4.23
//! and to a fresh `coffer serve`, and the normalized answers must be equal, except for the
//! differences listed in [`EXPECTED`], each with its reason: an upstream issue where 3.4.23 is
//! older than the etcd 3.5 behaviour Coffer implements, or "none:" where Coffer fills a field
//! no 3.4 release fills (headers, the 3.6 `hash_revision`).
//!
//! Run: `cargo build -p coffer && cargo test -p coffer-conformance --test side_by_side`.
//! `COFFER_CONFORMANCE_AGAINST=etcd` compares etcd with a second etcd instead (harness
//! self-check); `COFFER_CONFORMANCE_DUMP=1` prints etcd's transcript.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use coffer_conformance::client::Session;
use coffer_conformance::runner::side_by_side;
use coffer_conformance::transcript::ExpectedDifference;
use coffer_proto::{CompactionRequest, LeaseGrantRequest, PutRequest, RangeRequest, RequestOp};
use common::*;
use serde_json::{json, Value};

/// Where etcd 3.4.23 and Coffer (etcd 3.5 behaviour) are expected to answer differently.
const MEMBER_LIST_HEADER: &str =
    "none: etcd-api.md §1.1 (3.4.23's MemberList header has no revision; Coffer fills it)";
const MEMBER_LIST_WHY: &str =
    "clients do not read MemberList's header revision; a filled header is harmless";

const EXPECTED: &[ExpectedDifference] = &[
    ExpectedDifference {
        scenario: "status_and_members",
        step: "member list",
        issue: MEMBER_LIST_HEADER,
        why: MEMBER_LIST_WHY,
        expected_from_etcd: |v| v["header"]["revision"] = json!(2),
    },
    ExpectedDifference {
        scenario: "maintenance_and_cluster",
        step: "member list",
        issue: MEMBER_LIST_HEADER,
        why: MEMBER_LIST_WHY,
        expected_from_etcd: |v| v["header"]["revision"] = json!(6),
    },
    ExpectedDifference {
        scenario: "etcdctl_status_and_members",
        step: "member list",
        issue: MEMBER_LIST_HEADER,
        why: MEMBER_LIST_WHY,
        expected_from_etcd: |v| {
            v["stdout"]["header"] = json!({
                "keys": ["cluster_id", "member_id", "raft_term", "revision"],
                "revision": 2,
            })
        },
    },
    ExpectedDifference {
        scenario: "range_invalid_sort_target",
        step: "sort target 9",
        issue: "etcd-io/etcd#13554 (3.4/3.5 dereference a nil sorter and crash; 3.6 answers \
                invalid sort option)",
        why: "a request must never crash the server (architecture.md invariant 7)",
        expected_from_etcd: |v| *v = json!({"error": {"code": "InvalidArgument", "message": "etcdserver: invalid sort option"}}),
    },
    ExpectedDifference {
        scenario: "range_invalid_sort_target",
        step: "still serving",
        issue: "etcd-io/etcd#13554",
        why: "etcd is down after the previous request; the server must keep serving",
        expected_from_etcd: |v| {
            *v = json!({
                "header": {"revision": 3},
                "kvs": [
                    {"key": "a", "create_revision": 2, "mod_revision": 2, "version": 1, "value": "1", "lease": 0},
                    {"key": "b", "create_revision": 3, "mod_revision": 3, "version": 1, "value": "2", "lease": 0},
                ],
                "more": false,
                "count": 2,
            })
        },
    },
    ExpectedDifference {
        scenario: "status_and_members",
        step: "status",
        issue:
            "decisions.md: Coffer reports etcd 3.5.21 (kube-apiserver's RequestWatchProgress gate, \
                etcd-io/etcd#15220 fixed by #17557 in 3.5.13)",
        why: "Status.version is the release whose behaviour the server implements",
        expected_from_etcd: |v| v["version"] = json!("3.5.21"),
    },
    ExpectedDifference {
        scenario: "etcdctl_status_and_members",
        step: "endpoint status",
        issue: "decisions.md: Coffer reports etcd 3.5.21 (etcd-io/etcd#15220, #17557)",
        why: "Status.version is the release whose behaviour the server implements",
        expected_from_etcd: |v| {
            if let Some(list) = v["stdout"].as_array_mut() {
                for e in list {
                    e["Status"]["version"] = json!("3.5.21");
                }
            }
        },
    },
    ExpectedDifference {
        scenario: "maintenance_and_cluster",
        step: "hashkv 0",
        issue: HASH_REVISION,
        why: HASH_REVISION_WHY,
        expected_from_etcd: |v| v["hash_revision"] = json!(5),
    },
    ExpectedDifference {
        scenario: "maintenance_and_cluster",
        step: "hashkv 5",
        issue: HASH_REVISION,
        why: HASH_REVISION_WHY,
        expected_from_etcd: |v| v["hash_revision"] = json!(5),
    },
    ExpectedDifference {
        scenario: "maintenance_and_cluster",
        step: "hashkv after a put: current changed, revision 5 unchanged",
        issue: HASH_REVISION,
        why: HASH_REVISION_WHY,
        expected_from_etcd: |v| {
            v["0"]["hash_revision"] = json!(6);
            v["5"]["hash_revision"] = json!(5);
        },
    },
    ExpectedDifference {
        scenario: "maintenance_and_cluster",
        step: "defragment",
        issue: EMPTY_HEADER,
        why: EMPTY_HEADER_WHY,
        expected_from_etcd: |v| v["header"] = filled_header_at_6(),
    },
    ExpectedDifference {
        scenario: "maintenance_and_cluster",
        step: "move leader to self",
        issue: EMPTY_HEADER,
        why: EMPTY_HEADER_WHY,
        expected_from_etcd: |v| v["header"] = filled_header_at_6(),
    },
    ExpectedDifference {
        scenario: "maintenance_edges",
        step: "hashkv 0 after compacting the current revision",
        issue: HASH_REVISION,
        why: HASH_REVISION_WHY,
        expected_from_etcd: |v| v["hash_revision"] = json!(4),
    },
    ExpectedDifference {
        scenario: "maintenance_edges",
        step: "member add",
        issue: "none: Coffer is one member by design; etcd's answer (not enough started \
                members) suggests starting the new member would help",
        why: "a refusal that says what to do instead (snapshot save + restore for a standby)",
        expected_from_etcd: |v| {
            *v = json!({"error": {"code": "Unimplemented", "message":
                "coffer: a single-member server cannot add members; Coffer always runs as one \
                 member: for a standby, copy it with `etcdctl snapshot save` and `coffer \
                 snapshot restore`, or use etcd for a multi-member cluster"}})
        },
    },
];

const HASH_REVISION: &str =
    "none: etcd-api.md HashKVResponse.hash_revision is a 3.6 field (3.4 and 3.5 leave it 0)";
const HASH_REVISION_WHY: &str =
    "Coffer fills it with the revision hashed, as 3.6 does; older clients ignore an unknown field";
const EMPTY_HEADER: &str = "none: etcd-api.md §1.1 [obs] (etcd 3.4.23 answers Defragment and \
     MoveLeader with an empty response, no header; Coffer fills the header)";
const EMPTY_HEADER_WHY: &str =
    "no client reads these headers; the error answers (bad transferee) are compared unchanged";

fn filled_header_at_6() -> Value {
    json!({"revision": 6, "raft_term": 2, "cluster_id_set": true, "member_id_set": true})
}

macro_rules! scenario_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Err(report) = side_by_side(stringify!($name), EXPECTED, scenarios::$name).await {
                    panic!("{report}");
                }
            }
        )*
    };
}

scenario_tests!(
    range_basics,
    range_options,
    range_revisions,
    range_sort,
    range_invalid_sort_target,
    range_filters,
    put_options,
    delete_range,
    txn_compares,
    txn_compare_ranges,
    txn_execution,
    txn_nested,
    txn_validation,
    txn_limits,
    compact,
    size_limits,
    status_and_members,
    lease_errors,
    maintenance_and_cluster,
    maintenance_edges,
    etcdctl_kv,
    etcdctl_txn_and_compaction,
    etcdctl_status_and_members,
);

/// The expected-difference list names only scenarios and steps that exist.
#[test]
fn expected_differences_name_real_scenarios() {
    let names = [
        "maintenance_and_cluster",
        "maintenance_edges",
        "range_invalid_sort_target",
        "status_and_members",
        "etcdctl_status_and_members",
    ];
    for d in EXPECTED {
        assert!(
            names.contains(&d.scenario),
            "unknown scenario {}",
            d.scenario
        );
        assert!(!d.issue.is_empty() && !d.why.is_empty());
    }
}

mod scenarios {
    use super::*;

    async fn seed(s: &mut Session, pairs: &[(&str, &str)]) {
        for (k, v) in pairs {
            s.put_kv(&format!("seed {k}"), k, v).await;
        }
    }

    pub async fn range_basics(mut s: Session) -> Session {
        s.range("empty store", range("a")).await;
        seed(
            &mut s,
            &[("a", "z"), ("b", "y"), ("c", "x"), ("d", "w"), ("e", "v")],
        )
        .await;
        s.range("single key", range("a")).await;
        s.range("missing key", range("aa")).await;
        s.range("interval [b,d)", span("b", "d")).await;
        s.range("from key b", span("b", "\0")).await;
        s.range("whole keyspace", span("\0", "\0")).await;
        s.range("range_end < key", span("d", "b")).await;
        s.range("range_end == key", span("c", "c")).await;
        s.range("prefix of nothing", span("x", "y")).await;
        let mut empty = range("");
        s.range("empty key", empty.clone()).await;
        empty.range_end = b("z");
        s.range("empty key with end", empty).await;
        s.put_kv("put prefix/1", "p/1", "1").await;
        s.put_kv("put prefix/2", "p/2", "2").await;
        s.put_kv("put p0", "p0", "x").await;
        let pe = prefix_end(b"p/");
        s.range(
            "prefix p/",
            RangeRequest {
                key: b("p/"),
                range_end: pe,
                ..Default::default()
            },
        )
        .await;
        s.put(
            "put binary key",
            PutRequest {
                key: vec![0xff, 0x00, 0x01],
                value: vec![0x00, 0xfe],
                ..Default::default()
            },
        )
        .await;
        s.range(
            "binary key",
            RangeRequest {
                key: vec![0xff, 0x00, 0x01],
                ..Default::default()
            },
        )
        .await;
        s.range(
            "from 0xff",
            RangeRequest {
                key: vec![0xff],
                range_end: vec![0],
                ..Default::default()
            },
        )
        .await;
        s
    }

    pub async fn range_options(mut s: Session) -> Session {
        seed(
            &mut s,
            &[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4"), ("e", "5")],
        )
        .await;
        let all = span("a", "z");
        for limit in [-1, 0, 1, 2, 4, 5, 6] {
            s.range(
                &format!("limit {limit}"),
                RangeRequest {
                    limit,
                    ..all.clone()
                },
            )
            .await;
        }
        s.range(
            "keys_only",
            RangeRequest {
                keys_only: true,
                ..all.clone()
            },
        )
        .await;
        s.range(
            "keys_only limit 2",
            RangeRequest {
                keys_only: true,
                limit: 2,
                ..all.clone()
            },
        )
        .await;
        s.range(
            "count_only",
            RangeRequest {
                count_only: true,
                ..all.clone()
            },
        )
        .await;
        s.range(
            "count_only limit 2",
            RangeRequest {
                count_only: true,
                limit: 2,
                ..all.clone()
            },
        )
        .await;
        s.range(
            "count_only keys_only",
            RangeRequest {
                count_only: true,
                keys_only: true,
                ..all.clone()
            },
        )
        .await;
        s.range(
            "count_only single missing",
            RangeRequest {
                count_only: true,
                ..range("zz")
            },
        )
        .await;
        s.range(
            "serializable",
            RangeRequest {
                serializable: true,
                ..all.clone()
            },
        )
        .await;
        s.range(
            "serializable limit 1",
            RangeRequest {
                serializable: true,
                limit: 1,
                ..all.clone()
            },
        )
        .await;
        s.delete("delete c", del("c")).await;
        s.range("after delete", all.clone()).await;
        s.range(
            "count after delete",
            RangeRequest {
                count_only: true,
                ..all
            },
        )
        .await;
        s
    }

    pub async fn range_revisions(mut s: Session) -> Session {
        // revisions: a@2, b@3, a@4, c@5, del b@6, a@7
        s.put_kv("a v1", "a", "1").await;
        s.put_kv("b v1", "b", "1").await;
        s.put_kv("a v2", "a", "2").await;
        s.put_kv("c v1", "c", "1").await;
        s.delete("del b", del("b")).await;
        s.put_kv("a v3", "a", "3").await;
        let all = span("a", "z");
        for rev in [-5, -1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 100] {
            s.range(
                &format!("all at rev {rev}"),
                RangeRequest {
                    revision: rev,
                    ..all.clone()
                },
            )
            .await;
        }
        s.range(
            "count at rev 3",
            RangeRequest {
                revision: 3,
                count_only: true,
                ..all.clone()
            },
        )
        .await;
        s.range(
            "a at rev 3",
            RangeRequest {
                revision: 3,
                ..range("a")
            },
        )
        .await;
        s.compact(
            "compact 4",
            CompactionRequest {
                revision: 4,
                physical: true,
            },
        )
        .await;
        for rev in [1, 3, 4, 5, 7, 8] {
            s.range(
                &format!("all at rev {rev} after compact 4"),
                RangeRequest {
                    revision: rev,
                    ..all.clone()
                },
            )
            .await;
        }
        s.range(
            "count at compacted rev",
            RangeRequest {
                revision: 2,
                count_only: true,
                ..all.clone()
            },
        )
        .await;
        s.range(
            "empty key at compacted rev",
            RangeRequest {
                revision: 2,
                ..range("")
            },
        )
        .await;
        s
    }

    pub async fn range_sort(mut s: Session) -> Session {
        // Distinct orders per target: key a..d; values reversed; versions and revisions mixed.
        s.put_kv("c1", "c", "x").await; // c create 2
        s.put_kv("a1", "a", "z").await; // a create 3
        s.put_kv("d1", "d", "w").await; // d create 4
        s.put_kv("b1", "b", "y").await; // b create 5
        s.put_kv("c2", "c", "x").await; // c version 2 mod 6
        s.put_kv("c3", "c", "x").await; // c version 3 mod 7
        s.put_kv("a2", "a", "z").await; // a version 2 mod 8
        let all = span("a", "z");
        for order in [0, 1, 2, 3, 9] {
            for target in [0, 1, 2, 3, 4] {
                for limit in [0, 2] {
                    s.range(
                        &format!("order {order} target {target} limit {limit}"),
                        RangeRequest {
                            sort_order: order,
                            sort_target: target,
                            limit,
                            ..all.clone()
                        },
                    )
                    .await;
                }
            }
        }
        s.range(
            "descend keys_only",
            RangeRequest {
                sort_order: 2,
                keys_only: true,
                ..all.clone()
            },
        )
        .await;
        s.range(
            "descend count_only",
            RangeRequest {
                sort_order: 2,
                count_only: true,
                limit: 1,
                ..all.clone()
            },
        )
        .await;
        // The VALUE + limit quirk (etcd-api.md §1.2 step 6).
        s.put_kv("q a", "q/a", "z").await;
        s.put_kv("q b", "q/b", "y").await;
        s.put_kv("q c", "q/c", "x").await;
        let q = span("q/", "q0");
        s.range(
            "value target no order limit 1",
            RangeRequest {
                sort_target: 4,
                limit: 1,
                ..q.clone()
            },
        )
        .await;
        s.range(
            "value target ascend limit 1",
            RangeRequest {
                sort_target: 4,
                sort_order: 1,
                limit: 1,
                ..q.clone()
            },
        )
        .await;
        s.range(
            "value target no order limit 2",
            RangeRequest {
                sort_target: 4,
                limit: 2,
                ..q
            },
        )
        .await;
        s
    }

    /// A sort target outside the enum: etcd 3.4.23 (and 3.5) crash on it (etcd-io/etcd#13554);
    /// etcd 3.6 rejects it, which is what a server that must never panic does.
    pub async fn range_invalid_sort_target(mut s: Session) -> Session {
        seed(&mut s, &[("a", "1"), ("b", "2")]).await;
        s.range(
            "sort target 9",
            RangeRequest {
                sort_target: 9,
                ..span("a", "z")
            },
        )
        .await;
        s.range("still serving", span("a", "z")).await;
        s
    }

    pub async fn range_filters(mut s: Session) -> Session {
        seed(
            &mut s,
            &[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4"), ("e", "5")],
        )
        .await;
        s.put_kv("b again", "b", "22").await; // b mod 7, create 3
        let all = span("a", "z");
        let cases: [(&str, i64, i64, i64, i64); 8] = [
            ("min_mod 4", 4, 0, 0, 0),
            ("max_mod 4", 0, 4, 0, 0),
            ("mod 3..5", 3, 5, 0, 0),
            ("min_create 4", 0, 0, 4, 0),
            ("max_create 3", 0, 0, 0, 3),
            ("create 3..4", 0, 0, 3, 4),
            ("min_mod 100", 100, 0, 0, 0),
            ("all four", 2, 7, 2, 5),
        ];
        for (label, min_mod, max_mod, min_create, max_create) in cases {
            for limit in [0, 1] {
                s.range(
                    &format!("{label} limit {limit}"),
                    RangeRequest {
                        min_mod_revision: min_mod,
                        max_mod_revision: max_mod,
                        min_create_revision: min_create,
                        max_create_revision: max_create,
                        limit,
                        ..all.clone()
                    },
                )
                .await;
            }
        }
        s.range(
            "min_mod 6 count_only",
            RangeRequest {
                min_mod_revision: 6,
                count_only: true,
                ..all.clone()
            },
        )
        .await;
        s.range(
            "min_mod 6 keys_only descend",
            RangeRequest {
                min_mod_revision: 6,
                keys_only: true,
                sort_order: 2,
                ..all
            },
        )
        .await;
        s
    }

    async fn grant(s: &mut Session, label: &str, id: i64, ttl: i64) {
        let r = s.lease.lease_grant(LeaseGrantRequest { ttl, id }).await;
        let answer = match r {
            Ok(r) => {
                let r = r.into_inner();
                json!({"header": coffer_conformance::json::header(&r.header), "id": r.id, "ttl": r.ttl, "error": r.error})
            }
            Err(e) => coffer_conformance::json::status(&e),
        };
        s.record(
            label,
            json!({"lease_grant": {"id": id, "ttl": ttl}}),
            answer,
        );
    }

    pub async fn put_options(mut s: Session) -> Session {
        let p = |k: &str, v: &str| put(k, v);
        s.put(
            "new key prev_kv",
            PutRequest {
                prev_kv: true,
                ..p("a", "1")
            },
        )
        .await;
        s.put(
            "overwrite prev_kv",
            PutRequest {
                prev_kv: true,
                ..p("a", "2")
            },
        )
        .await;
        s.put("same value again", p("a", "2")).await;
        s.range("a after same value", range("a")).await;
        s.put("empty value", p("e", "")).await;
        s.range("empty value read", range("e")).await;
        s.put("empty key", p("", "x")).await;
        s.put(
            "ignore_value with value",
            PutRequest {
                ignore_value: true,
                ..p("a", "x")
            },
        )
        .await;
        s.put(
            "ignore_value absent key",
            PutRequest {
                ignore_value: true,
                ..p("zz", "")
            },
        )
        .await;
        s.put(
            "ignore_value existing prev_kv",
            PutRequest {
                ignore_value: true,
                prev_kv: true,
                ..p("a", "")
            },
        )
        .await;
        s.range("a after ignore_value", range("a")).await;
        s.put(
            "ignore_lease with lease",
            PutRequest {
                ignore_lease: true,
                lease: 5,
                ..p("a", "x")
            },
        )
        .await;
        s.put(
            "ignore_lease absent key",
            PutRequest {
                ignore_lease: true,
                ..p("zz", "v")
            },
        )
        .await;
        s.put(
            "lease not found",
            PutRequest {
                lease: 12345,
                ..p("a", "x")
            },
        )
        .await;
        s.put(
            "lease not found and ignore_value absent",
            PutRequest {
                lease: 12345,
                ignore_value: true,
                ..p("zz", "")
            },
        )
        .await;
        s.put(
            "empty key and ignore_value with value",
            PutRequest {
                ignore_value: true,
                ..p("", "x")
            },
        )
        .await;
        grant(&mut s, "grant 1000", 1000, 60).await;
        grant(&mut s, "grant 1000 again", 1000, 60).await;
        grant(&mut s, "grant too large ttl", 1001, 9_000_000_001).await;
        s.put(
            "put with lease",
            PutRequest {
                lease: 1000,
                ..p("l", "1")
            },
        )
        .await;
        s.range("l with lease", range("l")).await;
        s.put(
            "ignore_lease keeps lease",
            PutRequest {
                ignore_lease: true,
                prev_kv: true,
                ..p("l", "2")
            },
        )
        .await;
        s.range("l after ignore_lease", range("l")).await;
        s.put(
            "ignore both",
            PutRequest {
                ignore_lease: true,
                ignore_value: true,
                ..p("l", "")
            },
        )
        .await;
        s.range("l after ignore both", range("l")).await;
        s.put(
            "lease 0 detaches",
            PutRequest {
                prev_kv: true,
                ..p("l", "3")
            },
        )
        .await;
        s.range("l detached", range("l")).await;
        s.delete("delete a", del("a")).await;
        s.put(
            "recreate a prev_kv",
            PutRequest {
                prev_kv: true,
                ..p("a", "new")
            },
        )
        .await;
        s.range("a recreated", range("a")).await;
        s
    }

    pub async fn delete_range(mut s: Session) -> Session {
        seed(
            &mut s,
            &[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4"), ("e", "5")],
        )
        .await;
        s.delete("missing key", del("zz")).await;
        s.range("revision unchanged", range("a")).await;
        s.delete("missing key prev_kv", del_prev(del("zz"))).await;
        s.delete("empty key", del("")).await;
        s.delete("end < key", del_span("d", "b")).await;
        s.delete("end == key", del_span("d", "d")).await;
        s.delete("single prev_kv", del_prev(del("a"))).await;
        s.delete("single again", del_prev(del("a"))).await;
        s.delete("interval prev_kv", del_prev(del_span("b", "d")))
            .await;
        s.range("after interval", span("\0", "\0")).await;
        s.put_kv("b back", "b", "back").await;
        s.delete("from key c", del_prev(del_span("c", "\0"))).await;
        s.delete("all", del_prev(del_span("\0", "\0"))).await;
        s.delete("all again", del_span("\0", "\0")).await;
        s.range("empty", span("\0", "\0")).await;
        s.range(
            "history at 6",
            RangeRequest {
                revision: 6,
                ..span("\0", "\0")
            },
        )
        .await;
        s
    }

    fn del_prev(mut d: coffer_proto::DeleteRangeRequest) -> coffer_proto::DeleteRangeRequest {
        d.prev_kv = true;
        d
    }

    fn check(label: &str, c: coffer_proto::Compare) -> (String, coffer_proto::TxnRequest) {
        (
            label.to_string(),
            txn(vec![c], vec![op_range(range("k"))], vec![]),
        )
    }

    pub async fn txn_compares(mut s: Session) -> Session {
        s.put_kv("k v1", "k", "m").await; // create 2
        s.put_kv("k v2", "k", "m").await; // mod 3, version 2
        grant(&mut s, "grant 7", 7, 60).await;
        s.put(
            "l with lease",
            PutRequest {
                lease: 7,
                ..put("l", "v")
            },
        )
        .await;
        // every target x result against existing key k (version 2, create 2, mod 3, value m,
        // lease 0), with operands below / equal / above
        let operands: [(i32, [i64; 3], [&str; 3]); 5] = [
            (VERSION, [1, 2, 3], ["", "", ""]),
            (CREATE, [1, 2, 3], ["", "", ""]),
            (MOD, [2, 3, 4], ["", "", ""]),
            (VALUE, [0, 0, 0], ["l", "m", "n"]),
            (LEASE, [-1, 0, 1], ["", "", ""]),
        ];
        for (target, ns, vs) in operands {
            for result in [EQUAL, GREATER, LESS, NOT_EQUAL, 7] {
                for i in 0..3 {
                    let (label, t) = check(
                        &format!("k target {target} result {result} operand {i}"),
                        cmp("k", target, result, ns[i], vs[i]),
                    );
                    s.txn(&label, t).await;
                }
            }
        }
        // lease target on a leased key
        for result in [EQUAL, NOT_EQUAL, GREATER, LESS] {
            let (label, t) = check(
                &format!("l lease 7 result {result}"),
                cmp("l", LEASE, result, 7, ""),
            );
            s.txn(&label, t).await;
        }
        // absent key: zero KeyValue, VALUE always false
        for target in [VERSION, CREATE, MOD, LEASE, VALUE] {
            for result in [EQUAL, NOT_EQUAL, GREATER, LESS] {
                let (label, t) = check(
                    &format!("absent target {target} result {result}"),
                    cmp("absent", target, result, 0, ""),
                );
                s.txn(&label, t).await;
            }
        }
        let (label, t) = check("absent value != x", cmp("absent", VALUE, NOT_EQUAL, 0, "x"));
        s.txn(&label, t).await;
        // operand of another kind than the target counts as 0
        let mut c = cmp("k", MOD, EQUAL, 0, "");
        c.target_union = Some(coffer_proto::compare::TargetUnion::Version(3));
        let (label, t) = check("mod with version operand 3", c.clone());
        s.txn(&label, t).await;
        c.result = GREATER;
        let (label, t) = check("mod > version-operand (counts as 0)", c);
        s.txn(&label, t).await;
        let mut c = cmp("k", VERSION, EQUAL, 0, "");
        c.target_union = None;
        let (label, t) = check("version no operand == 0", c.clone());
        s.txn(&label, t).await;
        c.result = GREATER;
        let (label, t) = check("version no operand > 0", c);
        s.txn(&label, t).await;
        let mut c = cmp("k", VALUE, EQUAL, 0, "");
        c.target_union = None;
        let (label, t) = check("value no operand", c.clone());
        s.txn(&label, t).await;
        c.result = GREATER;
        let (label, t) = check("value no operand greater", c);
        s.txn(&label, t).await;
        // several compares: all must hold
        s.txn(
            "two true compares",
            txn(
                vec![
                    cmp("k", VERSION, EQUAL, 2, ""),
                    cmp("k", VALUE, EQUAL, 0, "m"),
                ],
                vec![op_range(range("k"))],
                vec![op_range(range("l"))],
            ),
        )
        .await;
        s.txn(
            "one false compare",
            txn(
                vec![
                    cmp("k", VERSION, EQUAL, 2, ""),
                    cmp("k", VALUE, EQUAL, 0, "x"),
                ],
                vec![op_range(range("k"))],
                vec![op_range(range("l"))],
            ),
        )
        .await;
        s.txn("no compares, no ops", txn(vec![], vec![], vec![]))
            .await;
        s.txn(
            "empty compare key",
            txn(vec![cmp("", VERSION, EQUAL, 0, "")], vec![], vec![]),
        )
        .await;
        s
    }

    pub async fn txn_compare_ranges(mut s: Session) -> Session {
        seed(&mut s, &[("r/a", "1"), ("r/b", "2"), ("r/c", "3")]).await;
        s.put_kv("r/b v2", "r/b", "2").await;
        let mut cases = Vec::new();
        for (label, target, result, n, v) in [
            ("all version >= 1 (GREATER 0)", VERSION, GREATER, 0, ""),
            ("all version == 1", VERSION, EQUAL, 1, ""),
            ("all value < 4", VALUE, LESS, 0, "4"),
            ("all value != 2", VALUE, NOT_EQUAL, 0, "2"),
            ("all mod > 1", MOD, GREATER, 1, ""),
            ("all create < 5", CREATE, LESS, 5, ""),
            ("all lease == 0", LEASE, EQUAL, 0, ""),
        ] {
            let mut c = cmp("r/", target, result, n, v);
            c.range_end = b("r0");
            cases.push((label.to_string(), c));
        }
        for (label, target, result) in [
            ("empty range mod == 0", MOD, EQUAL),
            ("empty range version != 0", VERSION, NOT_EQUAL),
            ("empty range value == ''", VALUE, EQUAL),
            ("empty range value != ''", VALUE, NOT_EQUAL),
        ] {
            let mut c = cmp("s/", target, result, 0, "");
            c.range_end = b("s0");
            cases.push((label.to_string(), c));
        }
        let mut c = cmp("r/", VERSION, GREATER, 0, "");
        c.range_end = b("\0");
        cases.push(("from-key range".to_string(), c));
        let mut c = cmp("r/c", VERSION, EQUAL, 0, "");
        c.range_end = b("r/a");
        cases.push(("range_end < key".to_string(), c));
        for (label, c) in cases {
            s.txn(
                &label,
                txn(vec![c], vec![op_put(put("ok", &label))], vec![]),
            )
            .await;
        }
        s
    }

    pub async fn txn_execution(mut s: Session) -> Session {
        s.put_kv("a", "a", "1").await;
        // Range, no-match DeleteRange, Put, no-match DeleteRange, Range: header revisions
        s.txn(
            "headers in one txn",
            txn(
                vec![],
                vec![
                    op_range(range("a")),
                    op_del(del("nothing")),
                    op_put(put("b", "1")),
                    op_del(del("nothing")),
                    op_range(span("a", "z")),
                    op_del(del_prev(del("a"))),
                    op_range(span("a", "z")),
                ],
                vec![],
            ),
        )
        .await;
        s.txn(
            "two puts one revision",
            txn(
                vec![],
                vec![
                    op_put(put("c", "1")),
                    op_put(put("d", "1")),
                    op_range(span("a", "z")),
                ],
                vec![],
            ),
        )
        .await;
        s.txn(
            "failed branch with no writes",
            txn(
                vec![cmp("c", VALUE, EQUAL, 0, "nope")],
                vec![op_put(put("c", "2"))],
                vec![op_range(range("c"))],
            ),
        )
        .await;
        s.txn(
            "failure branch writes",
            txn(
                vec![cmp("c", VALUE, EQUAL, 0, "nope")],
                vec![op_put(put("c", "2"))],
                vec![op_put(PutRequest {
                    prev_kv: true,
                    ..put("c", "3")
                })],
            ),
        )
        .await;
        s.txn(
            "only reads and empty deletes",
            txn(vec![], vec![op_range(range("c")), op_del(del("x"))], vec![]),
        )
        .await;
        s.txn(
            "delete then put same key via range delete after",
            txn(
                vec![],
                vec![op_put(put("e", "1")), op_del(del_prev(del_span("d", "f")))],
                vec![],
            ),
        )
        .await;
        // runtime failures on the chosen path abort the whole txn
        s.txn(
            "ignore_value on absent key",
            txn(
                vec![],
                vec![
                    op_put(put("f", "1")),
                    op_put(PutRequest {
                        ignore_value: true,
                        ..put("absent", "")
                    }),
                ],
                vec![],
            ),
        )
        .await;
        s.txn(
            "lease not found in txn",
            txn(
                vec![],
                vec![op_put(PutRequest {
                    lease: 99,
                    ..put("g", "1")
                })],
                vec![],
            ),
        )
        .await;
        s.txn(
            "bad op on the branch not taken",
            txn(
                vec![],
                vec![op_put(put("h", "1"))],
                vec![op_put(PutRequest {
                    lease: 99,
                    ..put("g", "1")
                })],
            ),
        )
        .await;
        s.txn(
            "future revision range in txn",
            txn(
                vec![],
                vec![
                    op_put(put("i", "1")),
                    op_range(RangeRequest {
                        revision: 1000,
                        ..range("a")
                    }),
                ],
                vec![],
            ),
        )
        .await;
        s.compact(
            "compact current-1",
            CompactionRequest {
                revision: 5,
                physical: true,
            },
        )
        .await;
        s.txn(
            "compacted revision range in txn",
            txn(
                vec![],
                vec![
                    op_put(put("j", "1")),
                    op_range(RangeRequest {
                        revision: 2,
                        ..range("a")
                    }),
                ],
                vec![],
            ),
        )
        .await;
        s.range("nothing applied", span("\0", "\0")).await;
        s
    }

    pub async fn txn_nested(mut s: Session) -> Session {
        s.put_kv("x", "x", "1").await;
        let inner_true = txn(
            vec![cmp("x", VALUE, EQUAL, 0, "1")],
            vec![op_put(put("n1", "s")), op_range(range("x"))],
            vec![op_put(put("n1", "f"))],
        );
        let inner_false = txn(
            vec![cmp("x", VALUE, EQUAL, 0, "2")],
            vec![op_put(put("n2", "s"))],
            vec![op_range(range("n1")), op_put(put("n2", "f"))],
        );
        s.txn(
            "nested true and false",
            txn(
                vec![],
                vec![
                    op_txn(inner_true),
                    op_txn(inner_false),
                    op_range(span("n", "o")),
                ],
                vec![],
            ),
        )
        .await;
        // inner compare decided from the pre-txn view, not after the outer put
        s.txn(
            "nested compare sees pre-txn view",
            txn(
                vec![],
                vec![
                    op_put(put("x", "2")),
                    op_txn(txn(
                        vec![cmp("x", VALUE, EQUAL, 0, "2")],
                        vec![op_put(put("seen", "new"))],
                        vec![op_put(put("seen", "old"))],
                    )),
                ],
                vec![],
            ),
        )
        .await;
        s.range("seen", range("seen")).await;
        s.txn(
            "nested read only",
            txn(
                vec![],
                vec![op_txn(txn(vec![], vec![op_range(range("x"))], vec![]))],
                vec![],
            ),
        )
        .await;
        s.txn(
            "doubly nested",
            txn(
                vec![],
                vec![op_txn(txn(
                    vec![],
                    vec![op_txn(txn(vec![], vec![op_put(put("deep", "1"))], vec![]))],
                    vec![],
                ))],
                vec![],
            ),
        )
        .await;
        s.txn(
            "nested empty txn",
            txn(vec![], vec![op_txn(txn(vec![], vec![], vec![]))], vec![]),
        )
        .await;
        s.txn(
            "nested error aborts all",
            txn(
                vec![],
                vec![
                    op_put(put("y", "1")),
                    op_txn(txn(
                        vec![],
                        vec![op_put(PutRequest {
                            ignore_lease: true,
                            ..put("nope", "1")
                        })],
                        vec![],
                    )),
                ],
                vec![],
            ),
        )
        .await;
        s.range("y absent", range("y")).await;
        s
    }

    fn empty_op() -> RequestOp {
        RequestOp { request: None }
    }

    pub async fn txn_validation(mut s: Session) -> Session {
        s.put_kv("a", "a", "1").await;
        let cases: Vec<(&str, coffer_proto::TxnRequest)> = vec![
            (
                "empty RequestOp in success",
                txn(vec![], vec![empty_op()], vec![]),
            ),
            (
                "empty RequestOp in failure",
                txn(vec![], vec![], vec![empty_op()]),
            ),
            (
                "empty RequestOp nested",
                txn(
                    vec![],
                    vec![op_txn(txn(vec![], vec![empty_op()], vec![]))],
                    vec![],
                ),
            ),
            (
                "empty key put",
                txn(vec![], vec![op_put(put("", "1"))], vec![]),
            ),
            (
                "empty key range",
                txn(vec![], vec![op_range(range(""))], vec![]),
            ),
            (
                "empty key delete",
                txn(vec![], vec![op_del(del(""))], vec![]),
            ),
            (
                "empty key in failure",
                txn(vec![], vec![], vec![op_put(put("", "1"))]),
            ),
            (
                "ignore_value with value in txn",
                txn(
                    vec![],
                    vec![op_put(PutRequest {
                        ignore_value: true,
                        ..put("a", "x")
                    })],
                    vec![],
                ),
            ),
            (
                "ignore_lease with lease in failure",
                txn(
                    vec![],
                    vec![],
                    vec![op_put(PutRequest {
                        ignore_lease: true,
                        lease: 3,
                        ..put("a", "")
                    })],
                ),
            ),
            (
                "two puts same key",
                txn(
                    vec![],
                    vec![op_put(put("d", "1")), op_put(put("d", "2"))],
                    vec![],
                ),
            ),
            (
                "two puts same key in failure",
                txn(
                    vec![],
                    vec![],
                    vec![op_put(put("d", "1")), op_put(put("d", "2"))],
                ),
            ),
            (
                "put in delete interval",
                txn(
                    vec![],
                    vec![op_del(del_span("c", "e")), op_put(put("d", "1"))],
                    vec![],
                ),
            ),
            (
                "put before delete interval",
                txn(
                    vec![],
                    vec![op_put(put("d", "1")), op_del(del_span("c", "e"))],
                    vec![],
                ),
            ),
            (
                "put and delete same key",
                txn(
                    vec![],
                    vec![op_del(del("d")), op_put(put("d", "1"))],
                    vec![],
                ),
            ),
            (
                "from-key delete never conflicts",
                txn(
                    vec![],
                    vec![op_del(del_span("x", "\0")), op_put(put("x5", "1"))],
                    vec![],
                ),
            ),
            (
                "delete end <= key never conflicts",
                txn(
                    vec![],
                    vec![op_del(del_span("z", "x")), op_put(put("y", "1"))],
                    vec![],
                ),
            ),
            (
                "two identical deletes",
                txn(
                    vec![],
                    vec![op_del(del_prev(del("a"))), op_del(del_prev(del("a")))],
                    vec![],
                ),
            ),
            (
                "same key success and failure",
                txn(
                    vec![],
                    vec![op_put(put("s", "1"))],
                    vec![op_put(put("s", "2"))],
                ),
            ),
            (
                "nested put vs outer put",
                txn(
                    vec![],
                    vec![
                        op_put(put("n", "1")),
                        op_txn(txn(vec![], vec![op_put(put("n", "2"))], vec![])),
                    ],
                    vec![],
                ),
            ),
            (
                "nested put vs outer delete before",
                txn(
                    vec![],
                    vec![
                        op_del(del("n")),
                        op_txn(txn(vec![], vec![op_put(put("n", "2"))], vec![])),
                    ],
                    vec![],
                ),
            ),
            (
                "nested put then later sibling nested delete",
                txn(
                    vec![],
                    vec![
                        op_txn(txn(vec![], vec![op_put(put("n", "2"))], vec![])),
                        op_txn(txn(vec![], vec![op_del(del("n"))], vec![])),
                    ],
                    vec![],
                ),
            ),
            (
                "nested delete then later sibling nested put",
                txn(
                    vec![],
                    vec![
                        op_txn(txn(vec![], vec![op_del(del("n"))], vec![])),
                        op_txn(txn(vec![], vec![op_put(put("n", "2"))], vec![])),
                    ],
                    vec![],
                ),
            ),
            (
                "nested put in success and failure of same nested",
                txn(
                    vec![],
                    vec![op_txn(txn(
                        vec![],
                        vec![op_put(put("n", "1"))],
                        vec![op_put(put("n", "2"))],
                    ))],
                    vec![],
                ),
            ),
            (
                "nested failure put vs own success delete",
                txn(
                    vec![],
                    vec![op_txn(txn(
                        vec![],
                        vec![op_del(del("n"))],
                        vec![op_put(put("n", "2"))],
                    ))],
                    vec![],
                ),
            ),
            (
                "two nested txns put same key",
                txn(
                    vec![],
                    vec![
                        op_txn(txn(vec![], vec![op_put(put("n", "1"))], vec![])),
                        op_txn(txn(vec![], vec![op_put(put("n", "2"))], vec![])),
                    ],
                    vec![],
                ),
            ),
            (
                "outer put after nested put",
                txn(
                    vec![],
                    vec![
                        op_txn(txn(vec![], vec![op_put(put("n", "1"))], vec![])),
                        op_put(put("n", "2")),
                    ],
                    vec![],
                ),
            ),
            (
                "outer delete after nested put",
                txn(
                    vec![],
                    vec![
                        op_txn(txn(vec![], vec![op_put(put("n", "1"))], vec![])),
                        op_del(del("n")),
                    ],
                    vec![],
                ),
            ),
            (
                "nested failure put vs outer delete",
                txn(
                    vec![],
                    vec![
                        op_del(del_span("m", "o")),
                        op_txn(txn(vec![], vec![], vec![op_put(put("n", "2"))])),
                    ],
                    vec![],
                ),
            ),
        ];
        for (label, t) in cases {
            s.txn(label, t).await;
        }
        s.range("final state", span("\0", "\0")).await;
        s
    }

    fn puts(prefix: &str, n: usize) -> Vec<RequestOp> {
        (0..n)
            .map(|i| op_put(put(&format!("{prefix}{i:03}"), "v")))
            .collect()
    }

    fn ranges(n: usize) -> Vec<RequestOp> {
        (0..n).map(|i| op_range(range(&format!("r{i}")))).collect()
    }

    fn compares(n: usize) -> Vec<coffer_proto::Compare> {
        (0..n)
            .map(|i| cmp(&format!("c{i}"), VERSION, EQUAL, 0, ""))
            .collect()
    }

    pub async fn txn_limits(mut s: Session) -> Session {
        s.txn("128 puts", txn(vec![], puts("p", 128), vec![])).await;
        s.txn("129 puts", txn(vec![], puts("q", 129), vec![])).await;
        s.txn("129 failure ranges", txn(vec![], vec![], ranges(129)))
            .await;
        s.txn("128 compares", txn(compares(128), vec![], vec![]))
            .await;
        s.txn("129 compares", txn(compares(129), vec![], vec![]))
            .await;
        s.txn(
            "128 compares 128 success 128 failure",
            txn(compares(128), ranges(128), ranges(128)),
        )
        .await;
        // nested: the limit of a nested txn is max - n of its parent
        let nested = |parent_ops: usize, nested_ops: usize| {
            let mut ops = ranges(parent_ops - 1);
            ops.push(op_txn(txn(vec![], puts("n", nested_ops), vec![])));
            txn(vec![], ops, vec![])
        };
        s.txn("parent 100 nested 28", nested(100, 28)).await;
        s.txn("parent 100 nested 29", nested(100, 29)).await;
        s.txn("parent 64 nested 64", nested(64, 64)).await;
        s.txn("parent 64 nested 65", nested(64, 65)).await;
        let mut ops = ranges(9);
        ops.push(op_txn(txn(compares(119), vec![], vec![])));
        s.txn(
            "parent 10 nested 119 compares",
            txn(vec![], ops.clone(), vec![]),
        )
        .await;
        let mut ops = ranges(9);
        ops.push(op_txn(txn(compares(118), vec![], vec![])));
        s.txn("parent 10 nested 118 compares", txn(vec![], ops, vec![]))
            .await;
        s.txn(
            "parent limit from compares",
            txn(
                compares(120),
                vec![op_txn(txn(vec![], puts("m", 9), vec![]))],
                vec![],
            ),
        )
        .await;
        s.txn(
            "parent limit from compares ok",
            txn(
                compares(120),
                vec![op_txn(txn(vec![], puts("m", 8), vec![]))],
                vec![],
            ),
        )
        .await;
        s.range(
            "count after limits",
            RangeRequest {
                count_only: true,
                ..span("\0", "\0")
            },
        )
        .await;
        s
    }

    pub async fn compact(mut s: Session) -> Session {
        for i in 0..6 {
            s.put_kv(&format!("put {i}"), "k", &format!("{i}")).await;
        }
        s.delete("del k", del("k")).await; // rev 8
        s.put_kv("put other", "o", "1").await; // rev 9
        s.compact(
            "compact future",
            CompactionRequest {
                revision: 10,
                physical: false,
            },
        )
        .await;
        s.compact(
            "compact 100",
            CompactionRequest {
                revision: 100,
                physical: true,
            },
        )
        .await;
        s.compact(
            "compact 3 physical",
            CompactionRequest {
                revision: 3,
                physical: true,
            },
        )
        .await;
        s.compact(
            "compact 2 again",
            CompactionRequest {
                revision: 2,
                physical: false,
            },
        )
        .await;
        s.compact(
            "compact 3 again",
            CompactionRequest {
                revision: 3,
                physical: true,
            },
        )
        .await;
        s.range(
            "k at 2",
            RangeRequest {
                revision: 2,
                ..range("k")
            },
        )
        .await;
        s.range(
            "k at 3",
            RangeRequest {
                revision: 3,
                ..range("k")
            },
        )
        .await;
        s.range(
            "k at 4",
            RangeRequest {
                revision: 4,
                ..range("k")
            },
        )
        .await;
        s.compact(
            "compact 8 logical",
            CompactionRequest {
                revision: 8,
                physical: false,
            },
        )
        .await;
        s.range(
            "k at 7",
            RangeRequest {
                revision: 7,
                ..range("k")
            },
        )
        .await;
        s.range(
            "k at 8",
            RangeRequest {
                revision: 8,
                ..range("k")
            },
        )
        .await;
        s.range(
            "all at 8",
            RangeRequest {
                revision: 8,
                ..span("\0", "\0")
            },
        )
        .await;
        s.range(
            "all at 9",
            RangeRequest {
                revision: 9,
                ..span("\0", "\0")
            },
        )
        .await;
        s.compact(
            "compact 9 = current",
            CompactionRequest {
                revision: 9,
                physical: true,
            },
        )
        .await;
        s.compact(
            "compact 0",
            CompactionRequest {
                revision: 0,
                physical: false,
            },
        )
        .await;
        s.compact(
            "compact -1",
            CompactionRequest {
                revision: -1,
                physical: false,
            },
        )
        .await;
        s.put_kv("put after compact", "k", "new").await;
        s.range("k recreated", range("k")).await;
        s.range("all", span("\0", "\0")).await;
        s
    }

    pub async fn size_limits(mut s: Session) -> Session {
        let mib = 1024 * 1024;
        let big = |n: usize| PutRequest {
            key: b("big"),
            value: vec![b'x'; n],
            ..Default::default()
        };
        s.put("1.4 MiB put", big(mib * 14 / 10)).await;
        s.put("1.6 MiB put", big(mib * 16 / 10)).await;
        s.put("2.5 MiB put", big(mib * 5 / 2)).await;
        s.put("3 MiB put", big(3 * mib)).await;
        s.txn(
            "1.6 MiB txn",
            txn(
                vec![],
                vec![
                    op_put(PutRequest {
                        key: b("t1"),
                        value: vec![b'y'; 800 * 1024],
                        ..Default::default()
                    }),
                    op_put(PutRequest {
                        key: b("t2"),
                        value: vec![b'y'; 850 * 1024],
                        ..Default::default()
                    }),
                ],
                vec![],
            ),
        )
        .await;
        s.range(
            "big range key",
            RangeRequest {
                key: vec![b'k'; 1600 * 1024],
                ..Default::default()
            },
        )
        .await;
        s.range(
            "2.5 MiB range key",
            RangeRequest {
                key: vec![b'k'; mib * 5 / 2],
                ..Default::default()
            },
        )
        .await;
        s.range(
            "state",
            RangeRequest {
                keys_only: true,
                ..span("\0", "\0")
            },
        )
        .await;
        s.range("big value back", range("big")).await;
        s
    }

    pub async fn status_and_members(mut s: Session) -> Session {
        s.put_kv("a", "a", "1").await;
        s.status("status").await;
        s.member_list("member list").await;
        s
    }

    pub async fn lease_errors(mut s: Session) -> Session {
        use coffer_conformance::json::{header, status};
        use coffer_proto::{LeaseRevokeRequest, LeaseTimeToLiveRequest};
        grant(&mut s, "grant 60 ttl 0 (raised to minimum)", 60, 0).await;
        grant(&mut s, "grant 50 ttl 30", 50, 30).await;
        grant(&mut s, "grant 51 ttl -3", 51, -3).await;
        grant(&mut s, "grant 70 ttl 1", 70, 1).await;
        grant(&mut s, "grant -5 (negative id accepted)", -5, 30).await;
        grant(&mut s, "grant 50 again", 50, 30).await;
        grant(&mut s, "grant max ttl", 52, 9_000_000_000).await;
        grant(&mut s, "grant max ttl + 1", 53, 9_000_000_001).await;
        s.put(
            "attach k1",
            PutRequest {
                lease: 50,
                ..put("k1", "v")
            },
        )
        .await;
        s.put(
            "attach k2",
            PutRequest {
                lease: 50,
                ..put("k2", "v")
            },
        )
        .await;
        let r = s
            .lease
            .lease_time_to_live(LeaseTimeToLiveRequest { id: 50, keys: true })
            .await;
        let a = match r {
            Ok(r) => {
                let r = r.into_inner();
                // etcd lists a lease's keys in Go map order (random from call to call): compare
                // them as a set.
                let mut keys = r.keys.clone();
                keys.sort();
                json!({"header": header(&r.header), "id": r.id, "granted_ttl": r.granted_ttl, "ttl_le_granted": r.ttl <= r.granted_ttl && r.ttl > 0, "keys": keys.iter().map(|k| coffer_conformance::json::bytes(k)).collect::<Vec<_>>()})
            }
            Err(e) => status(&e),
        };
        s.record(
            "ttl of 50 with keys",
            json!({"lease_time_to_live": {"id": 50, "keys": true}}),
            a,
        );
        let r = s
            .lease
            .lease_time_to_live(LeaseTimeToLiveRequest {
                id: 999,
                keys: true,
            })
            .await;
        let a = match r {
            Ok(r) => {
                let r = r.into_inner();
                json!({"header": header(&r.header), "id": r.id, "ttl": r.ttl, "granted_ttl": r.granted_ttl, "keys": r.keys.len()})
            }
            Err(e) => status(&e),
        };
        s.record(
            "ttl of unknown lease",
            json!({"lease_time_to_live": {"id": 999}}),
            a,
        );
        for (label, id) in [
            ("revoke 50 (deletes 2 keys)", 50),
            ("revoke 50 again", 50),
            ("revoke unknown", 999),
            ("revoke -5 (no keys)", -5),
        ] {
            let r = s.lease.lease_revoke(LeaseRevokeRequest { id }).await;
            let a = match r {
                Ok(r) => json!({"header": header(&r.into_inner().header)}),
                Err(e) => status(&e),
            };
            s.record(label, json!({"lease_revoke": {"id": id}}), a);
        }
        s.range("keys gone", span("k", "l")).await;
        s
    }

    pub async fn maintenance_and_cluster(mut s: Session) -> Session {
        use coffer_conformance::json::status;
        use coffer_proto::{
            AlarmRequest, DefragmentRequest, HashKvRequest, MemberPromoteRequest,
            MemberRemoveRequest, MoveLeaderRequest,
        };
        for i in 0..4 {
            s.put_kv(&format!("put {i}"), "k", &i.to_string()).await;
        }
        s.compact(
            "compact 3",
            CompactionRequest {
                revision: 3,
                physical: true,
            },
        )
        .await;
        // HashKV values differ by design (etcd hashes bbolt pages holding plaintext, Coffer
        // sealed records), so what must hold on both is compared: fields, stability for the
        // same state, a change after a put, and a past revision's hash unmoved by new writes.
        let mut hashes = std::collections::BTreeMap::new();
        for rev in [0, 2, 3, 5, 100] {
            let r = s.maintenance.hash_kv(HashKvRequest { revision: rev }).await;
            let again = s.maintenance.hash_kv(HashKvRequest { revision: rev }).await;
            let a = match (r, again) {
                (Ok(r), Ok(again)) => {
                    let (r, again) = (r.into_inner(), again.into_inner());
                    hashes.insert(rev, r.hash);
                    json!({"header": full_header(&r.header), "hash_nonzero": r.hash != 0,
                        "same_when_asked_again": r.hash == again.hash,
                        "compact_revision": r.compact_revision, "hash_revision": r.hash_revision})
                }
                (Err(e), _) | (_, Err(e)) => status(&e),
            };
            s.record(
                &format!("hashkv {rev}"),
                json!({"hash_kv": {"revision": rev}}),
                a,
            );
        }
        s.put_kv("put after hashkv", "k", "x").await;
        let mut after = serde_json::Map::new();
        for rev in [0, 5] {
            let r = s.maintenance.hash_kv(HashKvRequest { revision: rev }).await;
            let a = match r {
                Ok(r) => {
                    let r = r.into_inner();
                    json!({"header": full_header(&r.header), "hash_revision": r.hash_revision,
                        "compact_revision": r.compact_revision,
                        "equal_to_before_the_put": hashes.get(&rev) == Some(&r.hash)})
                }
                Err(e) => status(&e),
            };
            after.insert(rev.to_string(), a);
        }
        s.record(
            "hashkv after a put: current changed, revision 5 unchanged",
            json!({"hash_kv": [0, 5]}),
            Value::Object(after),
        );
        let r = s
            .maintenance
            .alarm(AlarmRequest {
                action: 0,
                member_id: 0,
                alarm: 0,
            })
            .await;
        let a = match r {
            Ok(r) => json!({"alarms": r.into_inner().alarms.len()}),
            Err(e) => status(&e),
        };
        s.record("alarm get", json!({"alarm": "GET"}), a);
        // Defragment after a physical compaction: its header, and the file not growing.
        let size = |r: &Result<tonic::Response<coffer_proto::StatusResponse>, tonic::Status>| {
            r.as_ref().map(|r| r.get_ref().db_size).unwrap_or(-1)
        };
        let before = s.maintenance.status(coffer_proto::StatusRequest {}).await;
        let r = s.maintenance.defragment(DefragmentRequest {}).await;
        let after = s.maintenance.status(coffer_proto::StatusRequest {}).await;
        let a = match r {
            Ok(r) => json!({
                "header": full_header(&r.into_inner().header),
                "db_size_not_grown": size(&after) <= size(&before) && size(&after) > 0,
                "db_size_in_use_le_db_size": after.as_ref().map(|r| r.get_ref().db_size_in_use <= r.get_ref().db_size).unwrap_or(false),
            }),
            Err(e) => status(&e),
        };
        s.record("defragment", json!({"defragment": {}}), a);
        let me = s
            .member_list("member list")
            .await
            .and_then(|m| m.header.map(|h| h.member_id))
            .unwrap_or(0);
        for (label, target, request) in [
            ("move leader to self", me, "self"),
            ("move leader to other", me ^ 1, "other"),
            ("move leader to 0", 0, "zero"),
        ] {
            let r = s
                .maintenance
                .move_leader(MoveLeaderRequest { target_id: target })
                .await;
            let a = match r {
                Ok(r) => json!({"header": full_header(&r.into_inner().header)}),
                Err(e) => status(&e),
            };
            s.record(label, json!({"move_leader": request}), a);
        }
        let r = s
            .cluster
            .member_remove(MemberRemoveRequest { id: me ^ 1 })
            .await;
        let a = match r {
            Ok(_) => json!({"ok": true}),
            Err(e) => status(&e),
        };
        s.record(
            "remove unknown member",
            json!({"member_remove": "unknown"}),
            a,
        );
        let r = s
            .cluster
            .member_promote(MemberPromoteRequest { id: me })
            .await;
        let a = match r {
            Ok(_) => json!({"ok": true}),
            Err(e) => status(&e),
        };
        s.record("promote self", json!({"member_promote": "self"}), a);
        let r = s
            .cluster
            .member_promote(MemberPromoteRequest { id: me ^ 1 })
            .await;
        let a = match r {
            Ok(_) => json!({"ok": true}),
            Err(e) => status(&e),
        };
        s.record("promote unknown", json!({"member_promote": "unknown"}), a);
        s.range("still serving", range("k")).await;
        s
    }

    /// Hash and HashKV(0) after a compaction at the current revision (etcd answers both; an
    /// explicit compacted revision fails), Alarm GET filtered by a known and an unknown alarm
    /// type, MemberAdd with valid URLs.
    pub async fn maintenance_edges(mut s: Session) -> Session {
        use coffer_conformance::json::status;
        use coffer_proto::alarm_request::AlarmAction;
        use coffer_proto::{AlarmRequest, AlarmType, HashKvRequest, HashRequest, MemberAddRequest};
        for i in 0..3 {
            s.put_kv(&format!("put {i}"), "k", &i.to_string()).await;
        }
        s.compact(
            "compact the current revision",
            CompactionRequest {
                revision: 4,
                physical: true,
            },
        )
        .await;
        let a = match s.maintenance.hash(HashRequest {}).await {
            Ok(r) => json!({"header": full_header(&r.into_inner().header), "ok": true}),
            Err(e) => status(&e),
        };
        s.record(
            "hash after compacting the current revision",
            json!({"hash": {}}),
            a,
        );
        for (label, rev) in [
            ("hashkv 0 after compacting the current revision", 0),
            ("hashkv at the compacted revision", 4),
        ] {
            let a = match s.maintenance.hash_kv(HashKvRequest { revision: rev }).await {
                Ok(r) => {
                    let r = r.into_inner();
                    json!({"header": full_header(&r.header), "compact_revision": r.compact_revision,
                        "hash_revision": r.hash_revision})
                }
                Err(e) => status(&e),
            };
            s.record(label, json!({"hash_kv": {"revision": rev}}), a);
        }
        let me = s
            .maintenance
            .status(coffer_proto::StatusRequest {})
            .await
            .map(|r| r.into_inner().leader)
            .unwrap_or(0);
        let alarm = |action: AlarmAction, alarm: i32| AlarmRequest {
            action: action as i32,
            member_id: if action == AlarmAction::Get { 0 } else { me },
            alarm,
        };
        let nospace = AlarmType::Nospace as i32;
        let requests = [
            ("activate NOSPACE", alarm(AlarmAction::Activate, nospace)),
            ("get NONE (all)", alarm(AlarmAction::Get, 0)),
            ("get NOSPACE", alarm(AlarmAction::Get, nospace)),
            (
                "get CORRUPT",
                alarm(AlarmAction::Get, AlarmType::Corrupt as i32),
            ),
            ("get unknown alarm type 7", alarm(AlarmAction::Get, 7)),
            (
                "deactivate NOSPACE",
                alarm(AlarmAction::Deactivate, nospace),
            ),
            ("get NONE after deactivate", alarm(AlarmAction::Get, 0)),
        ];
        for (label, req) in requests {
            let request = json!({"alarm": {"action": req.action, "alarm": req.alarm}});
            let a = match s.maintenance.alarm(req).await {
                Ok(r) => json!({"alarms": r
                    .into_inner()
                    .alarms
                    .iter()
                    .map(|a| json!([a.alarm, a.member_id == me]))
                    .collect::<Vec<_>>()}),
                Err(e) => status(&e),
            };
            s.record(label, request, a);
        }
        s.range("still serving", range("k")).await;
        let r = s
            .cluster
            .member_add(MemberAddRequest {
                peer_ur_ls: vec!["http://10.0.0.2:2380".into()],
                is_learner: false,
            })
            .await;
        let a = match r {
            Ok(_) => json!({"ok": true}),
            Err(e) => status(&e),
        };
        // Last: etcd 3.4.23 times out reads for a while after a refused MemberAdd.
        s.record(
            "member add",
            json!({"member_add": "http://10.0.0.2:2380"}),
            a,
        );
        s
    }

    /// A header with what two healthy single members share: the revision and raft term, and
    /// whether the ids are set (their values are the server's own).
    fn full_header(h: &Option<coffer_proto::ResponseHeader>) -> Value {
        match h {
            None => Value::Null,
            Some(h) => json!({"revision": h.revision, "raft_term": h.raft_term,
                "cluster_id_set": h.cluster_id != 0, "member_id_set": h.member_id != 0}),
        }
    }

    /// etcdctl's JSON for get/put/del, keys base64, normalized.
    pub async fn etcdctl_kv(mut s: Session) -> Session {
        for (k, v) in [
            ("/a/1", "one"),
            ("/a/2", "two"),
            ("/a/3", "three"),
            ("/b/1", "x"),
            ("c", "y"),
        ] {
            s.etcdctl(&format!("put {k}"), &["put", k, v], None);
        }
        s.etcdctl(
            "put prev-kv",
            &["-w", "json", "put", "/a/1", "uno", "--prev-kv"],
            None,
        );
        s.etcdctl(
            "put ignore-value",
            &["-w", "json", "put", "/a/2", "--ignore-value"],
            None,
        );
        s.etcdctl(
            "put ignore-value absent",
            &["put", "/zz", "--ignore-value"],
            None,
        );
        s.etcdctl(
            "put lease not found",
            &["put", "/zz", "v", "--lease=1234"],
            None,
        );
        s.etcdctl("get single", &["-w", "json", "get", "/a/1"], None);
        s.etcdctl("get missing", &["-w", "json", "get", "/nope"], None);
        s.etcdctl(
            "get prefix",
            &["-w", "json", "get", "/a/", "--prefix"],
            None,
        );
        s.etcdctl("get prefix simple", &["get", "/a/", "--prefix"], None);
        s.etcdctl(
            "get limit",
            &["-w", "json", "get", "/", "--prefix", "--limit=2"],
            None,
        );
        s.etcdctl("get rev", &["-w", "json", "get", "/a/1", "--rev=2"], None);
        s.etcdctl(
            "get future rev",
            &["-w", "json", "get", "/a/1", "--rev=100"],
            None,
        );
        for (by, order) in [
            ("KEY", "DESCEND"),
            ("VALUE", "ASCEND"),
            ("VALUE", "DESCEND"),
            ("VERSION", "DESCEND"),
            ("CREATE", "DESCEND"),
            ("MODIFY", "ASCEND"),
        ] {
            s.etcdctl(
                &format!("get sort {by} {order}"),
                &[
                    "-w",
                    "json",
                    "get",
                    "/",
                    "--prefix",
                    &format!("--sort-by={by}"),
                    &format!("--order={order}"),
                ],
                None,
            );
        }
        s.etcdctl(
            "get keys-only",
            &["-w", "json", "get", "/a/", "--prefix", "--keys-only"],
            None,
        );
        s.etcdctl(
            "get count-only",
            &["-w", "json", "get", "/a/", "--prefix", "--count-only"],
            None,
        );
        s.etcdctl(
            "get from-key",
            &["-w", "json", "get", "/b", "--from-key"],
            None,
        );
        s.etcdctl(
            "get from-key empty",
            &["-w", "json", "get", "", "--from-key", "--keys-only"],
            None,
        );
        s.etcdctl("get range", &["-w", "json", "get", "/a/1", "/a/3"], None);
        s.etcdctl(
            "del prev-kv",
            &["-w", "json", "del", "/a/1", "--prev-kv"],
            None,
        );
        s.etcdctl(
            "del prefix prev-kv",
            &["-w", "json", "del", "/a/", "--prefix", "--prev-kv"],
            None,
        );
        s.etcdctl("del missing", &["del", "/a/1"], None);
        s.etcdctl(
            "del from-key",
            &["-w", "json", "del", "/b", "--from-key"],
            None,
        );
        s.etcdctl("get all", &["-w", "json", "get", "", "--prefix"], None);
        s
    }

    pub async fn etcdctl_txn_and_compaction(mut s: Session) -> Session {
        s.etcdctl("put k", &["put", "k", "v1"], None);
        s.etcdctl("put k2", &["put", "k", "v2"], None);
        let t = "mod(\"k\") > \"0\"\nvalue(\"k\") = \"v2\"\n\nput k v3\nget k\ndel x\n\nput k never\n\n";
        s.etcdctl("txn success", &["-w", "json", "txn"], Some(t));
        let t = "version(\"k\") = \"1\"\n\nput k never\n\nget k --prefix\nput f failed\n\n";
        s.etcdctl("txn failure", &["-w", "json", "txn"], Some(t));
        let t = "create(\"absent\") = \"0\"\n\nput absent created\n\n\n";
        s.etcdctl("txn absent create", &["txn"], Some(t));
        let t = "value(\"nokey\") != \"x\"\n\nput y 1\n\nput y 2\n\n";
        s.etcdctl("txn value on absent", &["-w", "json", "txn"], Some(t));
        s.etcdctl("get all", &["-w", "json", "get", "", "--prefix"], None);
        s.etcdctl("compaction 3", &["compaction", "3"], None);
        s.etcdctl("compaction 2 again", &["compaction", "2"], None);
        s.etcdctl(
            "compaction physical 4",
            &["compaction", "--physical", "4"],
            None,
        );
        s.etcdctl("compaction future", &["compaction", "100"], None);
        s.etcdctl(
            "get at compacted",
            &["-w", "json", "get", "k", "--rev=2"],
            None,
        );
        s.etcdctl(
            "get at compact rev",
            &["-w", "json", "get", "k", "--rev=4"],
            None,
        );
        s
    }

    /// etcdctl's status and member list, with values two healthy members need not share
    /// (sizes, raft indexes, member ids, peer ports) reduced to facts.
    pub async fn etcdctl_status_and_members(mut s: Session) -> Session {
        s.etcdctl("put", &["put", "a", "1"], None);
        let ep = s.endpoint.clone();
        let status = etcdctl_raw(&ep, &["-w", "json", "endpoint", "status"]);
        let status = reduce_status(status);
        s.record(
            "endpoint status",
            json!({"etcdctl": "endpoint status -w json"}),
            status,
        );
        let members = etcdctl_raw(&ep, &["-w", "json", "member", "list"]);
        let members = reduce_members(members, &ep);
        s.record(
            "member list",
            json!({"etcdctl": "member list -w json"}),
            members,
        );
        let health = coffer_conformance::etcdctl::run(&ep, &["endpoint", "health"], None)
            .map(|o| json!({"exit": o.code, "healthy": o.stderr.contains("is healthy") || o.stdout.contains("is healthy")}))
            .unwrap_or_else(|e| json!({"harness_error": e.to_string()}));
        s.record(
            "endpoint health",
            json!({"etcdctl": "endpoint health"}),
            health,
        );
        s
    }

    fn etcdctl_raw(ep: &str, args: &[&str]) -> Value {
        match coffer_conformance::etcdctl::run(ep, args, None) {
            Ok(out) => {
                let parsed: Value = serde_json::from_str(out.stdout.trim())
                    .unwrap_or_else(|_| Value::String(out.stdout.clone()));
                json!({"exit": out.code, "stdout": parsed, "stderr": coffer_conformance::etcdctl::normalize_stderr(&out.stderr, ep)})
            }
            Err(e) => json!({"harness_error": e.to_string()}),
        }
    }

    fn positive(v: &Value) -> Value {
        json!(v.as_f64().is_some_and(|x| x > 0.0))
    }

    fn reduce_status(mut v: Value) -> Value {
        if let Some(list) = v["stdout"].as_array_mut() {
            for e in list {
                let st = e["Status"].clone();
                let member = st["header"]["member_id"].clone();
                e["Endpoint"] = json!("<client>");
                e["Status"] = json!({
                    "header_revision": st["header"]["revision"],
                    "version": st["version"],
                    "dbSize_positive": positive(&st["dbSize"]),
                    "leader_is_self": st["leader"] == member && !member.is_null(),
                    "raftIndex_positive": positive(&st["raftIndex"]),
                    "raftTerm_positive": positive(&st["raftTerm"]),
                    "raftAppliedIndex_positive": positive(&st["raftAppliedIndex"]),
                    "dbSizeInUse_positive": positive(&st["dbSizeInUse"]),
                    "errors": st.get("errors").cloned().unwrap_or(Value::Null),
                    "isLearner": st.get("isLearner").cloned().unwrap_or(Value::Null),
                });
            }
        }
        v
    }

    fn reduce_members(mut v: Value, ep: &str) -> Value {
        let member = v["stdout"]["header"]["member_id"].clone();
        let header_keys: Vec<String> = v["stdout"]["header"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        if let Some(list) = v["stdout"]["members"].as_array_mut() {
            for m in list {
                let id = m["ID"].clone();
                m["ID"] = json!({"nonzero": positive(&id), "matches_header": id == member});
                m["peerURLs"] =
                    json!({"nonempty": m["peerURLs"].as_array().is_some_and(|a| !a.is_empty())});
                for urls in ["clientURLs"] {
                    if let Some(us) = m[urls].as_array_mut() {
                        for u in us {
                            if let Some(s) = u.as_str() {
                                *u = json!(coffer_conformance::json::mask_url(s, ep));
                            }
                        }
                    }
                }
            }
        }
        if let Some(h) = v["stdout"].get_mut("header") {
            *h = json!({"keys": header_keys, "revision": h.get("revision").cloned()});
        }
        v
    }
}
