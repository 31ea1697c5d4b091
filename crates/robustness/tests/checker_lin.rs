//! Hand-written histories for the linearizability checker, each with the verdict it must get.

mod checker_support;

use std::time::Duration;

use checker_support::*;
use coffer_robustness::history::History;
use coffer_robustness::linearizability::{check, check_projection, Verdict};

const BUDGET: Duration = Duration::from_secs(10);

fn assert_ok(h: &History) {
    match check(h, BUDGET) {
        Verdict::Ok { .. } => {}
        other => panic!("expected linearizable, got {other:#?}"),
    }
}

/// Asserts a violation whose report mentions `needle`; returns the report.
fn assert_violation(h: &History, needle: &str) -> String {
    match check(h, BUDGET) {
        Verdict::Violation { report, minimal } => {
            assert!(
                report.contains(needle),
                "report should mention {needle:?}:\n{report}"
            );
            assert!(!minimal.operations.is_empty());
            report
        }
        other => panic!("expected a violation, got {other:#?}"),
    }
}

#[test]
fn sequential_writes_and_reads_are_linearizable() {
    let h = history(vec![
        put(1, 0, 10, "a", "1", 2),
        get(2, 20, 30, "a", 2, vec![kv("a", "1", 2, 2, 1)]),
        put(1, 40, 50, "a", "2", 3),
        get(2, 60, 70, "a", 3, vec![kv("a", "2", 2, 3, 2)]),
        delete(1, 80, 90, "a", 4, 1),
        get(2, 100, 110, "a", 4, vec![]),
        delete(1, 120, 130, "a", 4, 0),
    ]);
    assert_ok(&h);
}

#[test]
fn concurrent_read_may_see_either_side_of_a_write() {
    let h = history(vec![
        put(1, 0, 10, "a", "1", 2),
        put(1, 20, 100, "a", "2", 3),
        // Both reads overlap the second put: one before it, one after.
        get(2, 30, 40, "a", 2, vec![kv("a", "1", 2, 2, 1)]),
        get(3, 30, 110, "a", 3, vec![kv("a", "2", 2, 3, 2)]),
    ]);
    assert_ok(&h);
}

#[test]
fn stale_read_is_a_violation() {
    let h = history(vec![
        put(1, 0, 10, "a", "1", 2),
        put(1, 20, 30, "a", "2", 3),
        // Called after the second put returned, header 3, but shows the first value.
        get(2, 40, 50, "a", 3, vec![kv("a", "1", 2, 2, 1)]),
    ]);
    let report = assert_violation(&h, "stale read");
    assert!(
        report.contains("a=2"),
        "report shows what the model expected:\n{report}"
    );
}

#[test]
fn stale_read_with_old_header_contradicts_real_time() {
    let h = history(vec![
        put(1, 0, 10, "a", "1", 2),
        put(1, 20, 30, "a", "2", 3),
        get(2, 40, 50, "a", 2, vec![kv("a", "1", 2, 2, 1)]),
    ]);
    assert_violation(&h, "real-time order");
}

#[test]
fn lost_acknowledged_write_is_a_violation() {
    let h = history(vec![
        put(1, 0, 10, "a", "1", 2),
        put(1, 20, 30, "b", "1", 3),
        // The write of a was acknowledged with revision 2; a later read at 3 lacks it.
        get(2, 40, 50, "a", 3, vec![]),
    ]);
    assert_violation(&h, "not linearizable");
}

#[test]
fn revision_going_backwards_is_a_violation() {
    let h = history(vec![
        put(1, 0, 10, "a", "1", 2),
        put(1, 20, 30, "b", "1", 3),
        // Starts after revision 3 was acknowledged, yet reports revision 2.
        get(2, 40, 50, "b", 2, vec![]),
    ]);
    assert_violation(&h, "real-time order");
}

#[test]
fn duplicate_revision_is_a_violation() {
    let h = history(vec![put(1, 0, 10, "a", "1", 2), put(2, 0, 10, "b", "1", 2)]);
    assert_violation(&h, "duplicate revision");
}

#[test]
fn txn_cas_anomaly_is_a_violation() {
    let h = history(vec![
        put(1, 0, 10, "a", "1", 2),
        cas(1, 20, 30, "a", 2, "x", 3, true, vec![]),
        // mod(a) is 3 now: a second CAS on 2 must fail.
        cas(2, 40, 50, "a", 2, "y", 4, true, vec![]),
    ]);
    assert_violation(&h, "txn compare");
}

#[test]
fn txn_cas_that_fails_correctly_is_linearizable() {
    let h = history(vec![
        put(1, 0, 10, "a", "1", 2),
        cas(1, 20, 30, "a", 2, "x", 3, true, vec![]),
        cas(
            2,
            40,
            50,
            "a",
            2,
            "y",
            3,
            false,
            vec![kv("a", "x", 2, 3, 2)],
        ),
    ]);
    assert_ok(&h);
}

#[test]
fn uncertain_write_that_appears_later_is_linearizable() {
    let h = history(vec![
        put_unknown(1, 0, "a", "1"),
        put(2, 50, 60, "b", "1", 3),
        get(3, 100, 110, "a", 3, vec![kv("a", "1", 2, 2, 1)]),
    ]);
    assert_ok(&h);
}

#[test]
fn uncertain_write_that_never_happened_is_linearizable() {
    let h = history(vec![
        put_unknown(1, 0, "a", "1"),
        put(2, 50, 60, "b", "1", 2),
        get(3, 100, 110, "a", 2, vec![]),
    ]);
    assert_ok(&h);
}

#[test]
fn uncertain_write_seen_at_a_revision_another_write_made_is_a_violation() {
    let h = history(vec![
        put_unknown(1, 0, "a", "1"),
        put(2, 50, 60, "b", "1", 2),
        // Revision 2 is b's; a=1 cannot have mod_revision 2.
        get(3, 100, 110, "a", 2, vec![kv("a", "1", 2, 2, 1)]),
    ]);
    assert_violation(&h, "not linearizable");
}

#[test]
fn uncertain_write_seen_before_it_was_sent_is_a_violation() {
    let h = history(vec![
        get(3, 0, 10, "a", 2, vec![kv("a", "1", 2, 2, 1)]),
        put_unknown(1, 50, "a", "1"),
    ]);
    assert_violation(&h, "not linearizable");
}

#[test]
fn uncertain_delete_fills_a_revision_gap() {
    let h = history(vec![
        put(1, 0, 10, "a", "1", 2),
        delete_unknown(1, 20, "a"),
        get(2, 40, 50, "a", 3, vec![]),
    ]);
    assert_ok(&h);
}

#[test]
fn revision_nobody_wrote_is_a_violation() {
    let h = history(vec![
        put(1, 0, 10, "a", "1", 2),
        put(1, 20, 30, "b", "1", 4),
    ]);
    assert_violation(&h, "revision without a write");
}

#[test]
fn search_picks_the_right_uncertain_writer_among_several() {
    // Three uncertain writes; only the delete of b explains revision 4 (b gone, a kept).
    let h = history(vec![
        put(1, 0, 10, "a", "1", 2),
        put(1, 20, 30, "b", "1", 3),
        put_unknown(2, 40, "a", "9"),
        delete_unknown(3, 40, "a"),
        delete_unknown(4, 40, "b"),
        get(5, 100, 110, "a", 4, vec![kv("a", "1", 2, 2, 1)]),
        get(5, 120, 130, "b", 4, vec![]),
    ]);
    assert_ok(&h);
}

#[test]
fn lease_revoke_deletes_attached_keys_in_one_revision() {
    let h = history(vec![
        grant(1, 0, 10, 7, 1),
        put_lease(1, 20, 30, "a", "1", 7, 2),
        put_lease(1, 40, 50, "b", "1", 7, 3),
        revoke(1, 60, 70, 7, 4),
        get(2, 80, 90, "a", 4, vec![]),
        get(2, 80, 90, "b", 4, vec![]),
        // A lease without keys revokes without a revision.
        grant(1, 100, 110, 8, 4),
        revoke(1, 120, 130, 8, 4),
    ]);
    assert_ok(&h);
}

#[test]
fn revoke_that_kept_attached_keys_is_a_violation() {
    let h = history(vec![
        grant(1, 0, 10, 7, 1),
        put_lease(1, 20, 30, "a", "1", 7, 2),
        put(1, 40, 50, "b", "1", 3),
        revoke(1, 60, 70, 7, 3),
    ]);
    assert_violation(&h, "lease");
}

#[test]
fn compaction_to_an_already_compacted_revision_is_a_violation() {
    let h = history(vec![
        put(1, 0, 10, "a", "1", 2),
        put(1, 20, 30, "a", "2", 3),
        compact(1, 40, 50, 3, 3),
        compact(2, 60, 70, 2, 3),
    ]);
    assert_violation(&h, "Compact 2");
}

#[test]
fn report_of_a_stale_read_is_short_and_fails_again_as_a_projection() {
    // Much unrelated traffic on other keys around one stale read of "a".
    let mut ops = Vec::new();
    let mut rev = 1;
    let mut t = 0;
    for i in 0..200 {
        rev += 1;
        ops.push(put(
            1,
            t,
            t + 5,
            &format!("k{}", i % 7),
            &format!("x{i}"),
            rev,
        ));
        t += 10;
        if i == 100 {
            rev += 1;
            ops.push(put(2, t, t + 5, "a", "1", rev));
            t += 10;
            rev += 1;
            ops.push(put(2, t, t + 5, "a", "2", rev));
            t += 10;
            ops.push(get(
                3,
                t,
                t + 5,
                "a",
                rev,
                vec![kv("a", "1", rev - 1, rev - 1, 1)],
            ));
            t += 10;
        }
    }
    let h = history(ops);
    let Verdict::Violation { report, minimal } = check(&h, BUDGET) else {
        panic!("expected a violation");
    };
    assert!(minimal.operations.len() <= 3, "minimal too long:\n{report}");
    assert!(
        report.contains("=> #"),
        "the failing operation is marked:\n{report}"
    );
    assert!(
        matches!(
            check_projection(&minimal, BUDGET),
            Verdict::Violation { .. }
        ),
        "the minimal history fails on its own:\n{report}"
    );
}

#[test]
fn malformed_history_is_unknown_not_a_violation() {
    let mut h = history(vec![put(1, 0, 10, "a", "1", 2)]);
    h.operations[0].ret = Some(0);
    h.operations[0].call = 5;
    assert!(matches!(check(&h, BUDGET), Verdict::Unknown { .. }));
}

#[test]
fn exhausted_budget_gives_unknown() {
    let h = generate(
        7,
        &SimConfig {
            clients: 8,
            ops: 3000,
            keys: 5,
            uncertain: 20,
            leases: false,
            compactions: false,
        },
    );
    match check(&h, Duration::ZERO) {
        Verdict::Unknown { reason } => assert!(reason.contains("budget"), "{reason}"),
        other => panic!("expected Unknown, got {other:?}"),
    }
}
