//! The watch validator, one test per guarantee, on a small hand-written history.

mod checker_support;

use checker_support::*;
use coffer_robustness::history::*;
use coffer_robustness::watch_check::check;

fn put_ev(
    key: &str,
    value: &str,
    create: i64,
    modr: i64,
    version: i64,
    prev: Option<KeyValue>,
) -> WatchEvent {
    WatchEvent {
        response_revision: modr,
        kind: EventKind::Put,
        kv: kv(key, value, create, modr, version),
        prev_kv: prev,
    }
}

fn del_ev(key: &str, modr: i64, prev: Option<KeyValue>) -> WatchEvent {
    WatchEvent {
        response_revision: modr,
        kind: EventKind::Delete,
        kv: KeyValue {
            key: key.into(),
            value: String::new(),
            create_revision: 0,
            mod_revision: modr,
            version: 0,
            lease: 0,
        },
        prev_kv: prev,
    }
}

/// Revisions: 2 put a=1, 3 put b=1, 4 put a=2, 5 delete b, 6 txn [put a=3, put b=2].
fn kv_history() -> Vec<Operation> {
    let mut txn = cas(1, 60, 70, "a", 4, "3", 6, true, vec![]);
    if let Request::Txn { success, .. } = &mut txn.request {
        success.push(TxnOp::Put {
            key: "b".into(),
            value: "2".into(),
        });
    }
    if let Outcome::Ok(Response::Txn { results, .. }) = &mut txn.outcome {
        results.push(TxnOpResult::Put);
    }
    vec![
        put(1, 0, 10, "a", "1", 2),
        put(1, 20, 30, "b", "1", 3),
        put(1, 40, 45, "a", "2", 4),
        delete(1, 50, 55, "b", 5, 1),
        txn,
    ]
}

fn all_events() -> Vec<WatchEvent> {
    vec![
        put_ev("a", "1", 2, 2, 1, None),
        put_ev("b", "1", 3, 3, 1, None),
        put_ev("a", "2", 2, 4, 2, Some(kv("a", "1", 2, 2, 1))),
        del_ev("b", 5, Some(kv("b", "1", 3, 3, 1))),
        put_ev("a", "3", 2, 6, 3, Some(kv("a", "2", 2, 4, 2))),
        put_ev("b", "2", 6, 6, 1, None),
    ]
}

fn watch(start: i64, events: Vec<WatchEvent>) -> WatchRecord {
    WatchRecord {
        client: 100,
        key: "a".into(),
        range_end: Some("c".into()),
        start_revision: start,
        created_revision: 1,
        prev_kv: true,
        events,
        progress: Vec::new(),
        cancel: None,
        broken: false,
    }
}

fn kinds(ops: Vec<Operation>, w: WatchRecord) -> Vec<&'static str> {
    let h = History {
        operations: ops,
        watches: vec![w],
        ..Default::default()
    };
    let v = check(&h);
    for x in &v {
        eprintln!("{x}");
    }
    v.iter().map(|x| x.kind).collect()
}

#[test]
fn complete_watch_has_no_violation() {
    assert!(kinds(kv_history(), watch(2, all_events())).is_empty());
    // From "now" (start 0, created at 1) it is the same stream.
    assert!(kinds(kv_history(), watch(0, all_events())).is_empty());
}

#[test]
fn single_key_watch_sees_only_its_key() {
    let mut w = watch(
        2,
        all_events()
            .into_iter()
            .filter(|e| e.kv.key == "a")
            .collect(),
    );
    w.range_end = None;
    assert!(kinds(kv_history(), w.clone()).is_empty());
    w.events.push(put_ev("b", "2", 6, 6, 1, None));
    assert!(kinds(kv_history(), w).contains(&"in-range"));
}

#[test]
fn dropped_event_breaks_gap_free() {
    let mut ev = all_events();
    ev.remove(2);
    assert_eq!(kinds(kv_history(), watch(2, ev)), vec!["gap-free"]);
}

#[test]
fn half_of_a_txn_breaks_gap_free() {
    let mut ev = all_events();
    ev.pop();
    assert_eq!(kinds(kv_history(), watch(2, ev)), vec!["gap-free"]);
}

#[test]
fn duplicate_event_breaks_unique() {
    let mut ev = all_events();
    ev.insert(3, ev[2].clone());
    assert_eq!(kinds(kv_history(), watch(2, ev)), vec!["unique"]);
}

#[test]
fn swapped_events_break_ordered() {
    let mut ev = all_events();
    ev.swap(1, 2);
    assert_eq!(kinds(kv_history(), watch(2, ev)), vec!["ordered"]);
}

#[test]
fn txn_events_out_of_op_order_break_ordered() {
    let mut ev = all_events();
    ev.swap(4, 5);
    assert_eq!(kinds(kv_history(), watch(2, ev)), vec!["ordered"]);
}

#[test]
fn wrong_prev_kv_is_caught() {
    let mut ev = all_events();
    ev[4].prev_kv = Some(kv("a", "1", 2, 2, 1));
    assert_eq!(kinds(kv_history(), watch(2, ev)), vec!["prev-kv"]);
    let mut ev = all_events();
    ev[2].prev_kv = None;
    assert_eq!(kinds(kv_history(), watch(2, ev)), vec!["prev-kv-missing"]);
}

#[test]
fn wrong_value_or_version_does_not_match_history() {
    let mut ev = all_events();
    ev[2].kv.value = "9".into();
    assert_eq!(kinds(kv_history(), watch(2, ev)), vec!["matches-history"]);
    let mut ev = all_events();
    ev[2].kv.version = 7;
    assert_eq!(kinds(kv_history(), watch(2, ev)), vec!["matches-history"]);
}

#[test]
fn event_before_start_revision_is_caught() {
    assert_eq!(
        kinds(kv_history(), watch(3, all_events())),
        vec!["after-start"]
    );
}

#[test]
fn skipped_instead_of_cancelled_after_compaction_is_caught() {
    // etcd #17529: the watcher needed revision 2, the store was compacted to 4, and the
    // stream went on from 5 instead of being cancelled.
    let mut ops = kv_history();
    ops.push(compact(2, 46, 48, 4, 4));
    let ev = all_events().split_off(3);
    assert_eq!(kinds(ops, watch(2, ev)), vec!["compacted-not-cancelled"]);
}

#[test]
fn cancel_for_compaction_is_accepted_only_when_needed() {
    let mut ops = kv_history();
    ops.push(compact(2, 46, 48, 4, 4));
    let mut w = watch(2, all_events()[..1].to_vec());
    w.cancel = Some(WatchCancel {
        compact_revision: 4,
        reason: String::new(),
    });
    assert!(kinds(ops.clone(), w.clone()).is_empty());
    // Needed revisions from 5 on only: nothing was compacted away from it.
    w.start_revision = 5;
    w.events.clear();
    assert_eq!(kinds(ops.clone(), w.clone()), vec!["compaction-cancel"]);
    // A compaction no client asked for.
    w.start_revision = 2;
    w.cancel = Some(WatchCancel {
        compact_revision: 3,
        reason: String::new(),
    });
    assert_eq!(kinds(ops, w), vec!["compaction-cancel"]);
}

#[test]
fn broken_stream_is_checked_up_to_its_last_event() {
    let mut w = watch(2, all_events()[..2].to_vec());
    w.broken = true;
    assert!(kinds(kv_history(), w.clone()).is_empty());
    // But a progress notification at 6 promised everything up to 6.
    w.progress = vec![6];
    assert_eq!(kinds(kv_history(), w), vec!["progress-notify"]);
}

#[test]
fn uncertain_write_seen_by_a_watcher_belongs_to_the_final_history() {
    let mut ops = kv_history();
    ops.push(put_unknown(2, 80, "a", "9"));
    let mut seen = all_events();
    seen.push(put_ev("a", "9", 2, 7, 4, Some(kv("a", "3", 2, 6, 3))));
    let h = History {
        operations: ops,
        watches: vec![watch(2, seen), watch(2, all_events())],
        ..Default::default()
    };
    let v = check(&h);
    let got: Vec<(usize, &str)> = v.iter().map(|x| (x.watch, x.kind)).collect();
    assert_eq!(got, vec![(1, "gap-free")], "{v:?}");
}
