//! Generated histories: random linearizable ones must pass, mutated ones must fail when the
//! mutation is certainly detectable, and a big one must check within the budget.

mod checker_support;

use std::time::{Duration, Instant};

use checker_support::*;
use coffer_robustness::history::{History, KeyValue, Outcome, Response};
use coffer_robustness::linearizability::{check, Verdict};
use proptest::prelude::*;

const BUDGET: Duration = Duration::from_secs(30);

fn config() -> impl Strategy<Value = SimConfig> {
    (
        2u32..10,
        50usize..600,
        1usize..8,
        0u64..80,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(clients, ops, keys, uncertain, leases, compactions)| SimConfig {
                clients,
                ops,
                keys,
                uncertain,
                leases,
                compactions,
            },
        )
}

fn is_ok(h: &History) -> Result<(), String> {
    match check(h, BUDGET) {
        Verdict::Ok { .. } => Ok(()),
        Verdict::Violation { report, .. } => Err(report),
        Verdict::Unknown { reason } => Err(reason),
    }
}

/// Indices of answered reads that returned at least one key.
fn reads_with_values(h: &History) -> Vec<usize> {
    h.operations
        .iter()
        .enumerate()
        .filter(|(_, op)| {
            matches!(&op.outcome, Outcome::Ok(Response::Range { kvs, .. }) if !kvs.is_empty())
        })
        .map(|(i, _)| i)
        .collect()
}

fn answered_puts(h: &History) -> Vec<usize> {
    h.operations
        .iter()
        .enumerate()
        .filter(|(_, op)| matches!(op.outcome, Outcome::Ok(Response::Put { .. })))
        .map(|(i, _)| i)
        .collect()
}

fn first_kv(h: &mut History, i: usize) -> &mut KeyValue {
    match &mut h.operations[i].outcome {
        Outcome::Ok(Response::Range { kvs, .. }) => &mut kvs[0],
        _ => unreachable!("chosen among reads with values"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn generated_histories_are_linearizable(seed in any::<u64>(), cfg in config()) {
        let h = generate(seed, &cfg);
        if let Err(why) = is_ok(&h) {
            prop_assert!(false, "seed {seed} {cfg:?}:\n{why}");
        }
    }

    #[test]
    fn a_read_of_a_value_never_written_is_caught(seed in any::<u64>(), cfg in config(), pick in any::<prop::sample::Index>()) {
        let mut h = generate(seed, &cfg);
        let reads = reads_with_values(&h);
        prop_assume!(!reads.is_empty());
        let i = reads[pick.index(reads.len())];
        first_kv(&mut h, i).value = "never-written".into();
        prop_assert!(matches!(check(&h, BUDGET), Verdict::Violation { .. }), "seed {seed}: mutation of #{i} not caught");
    }

    #[test]
    fn two_puts_reporting_one_revision_are_caught(seed in any::<u64>(), cfg in config(), a in any::<prop::sample::Index>(), b in any::<prop::sample::Index>()) {
        let mut h = generate(seed, &cfg);
        let puts = answered_puts(&h);
        prop_assume!(puts.len() >= 2);
        let (i, j) = (puts[a.index(puts.len())], puts[b.index(puts.len())]);
        prop_assume!(i != j);
        let Outcome::Ok(Response::Put { revision }) = h.operations[i].outcome.clone() else { unreachable!() };
        h.operations[j].outcome = Outcome::Ok(Response::Put { revision });
        prop_assert!(matches!(check(&h, BUDGET), Verdict::Violation { .. }), "seed {seed}");
    }

    #[test]
    fn a_read_showing_another_revision_is_caught(seed in any::<u64>(), cfg in config(), pick in any::<prop::sample::Index>(), delta in 1i64..5) {
        // A read's key with its mod_revision moved: another write made that revision (or
        // none did), so no linearization can show this value with it, unless the value's
        // writer is uncertain and could itself have made the new revision.
        let mut h = generate(seed, &cfg);
        let reads: Vec<usize> = reads_with_values(&h);
        prop_assume!(!reads.is_empty());
        let i = reads[pick.index(reads.len())];
        let kv = first_kv(&mut h, i);
        kv.mod_revision += delta;
        let value = kv.value.clone();
        let writer_uncertain = h.operations.iter().any(|op| {
            matches!(op.outcome, Outcome::Unknown(_))
                && format!("{:?}", op.request).contains(&format!("{value:?}"))
        });
        prop_assume!(!writer_uncertain);
        prop_assert!(matches!(check(&h, BUDGET), Verdict::Violation { .. }), "seed {seed}");
    }
}

#[test]
fn random_mutations_are_mostly_caught() {
    // Not every mutation is detectable (a header revision moved inside a quiet stretch may
    // still fit); count and show the rate, and require that most are caught.
    let cfg = SimConfig {
        clients: 6,
        ops: 400,
        keys: 4,
        uncertain: 20,
        leases: true,
        compactions: true,
    };
    let (mut tried, mut caught) = (0, 0);
    for seed in 0..60u64 {
        let mut h = generate(seed, &cfg);
        let mut rng = checker_support::Rng::new(seed ^ 0xABCD);
        let answered: Vec<usize> = h
            .operations
            .iter()
            .enumerate()
            .filter(|(_, op)| matches!(op.outcome, Outcome::Ok(_)))
            .map(|(i, _)| i)
            .collect();
        let i = answered[rng.below(answered.len() as u64) as usize];
        let Outcome::Ok(resp) = &mut h.operations[i].outcome else {
            unreachable!()
        };
        match resp {
            Response::Put { revision } | Response::Compact { revision } => *revision += 1,
            Response::Range { revision, kvs } => match kvs.first_mut() {
                Some(kv) => kv.version += 1,
                None => *revision -= 1,
            },
            Response::Delete { deleted, .. } => *deleted = 1 - *deleted,
            Response::Txn { succeeded, .. } => *succeeded = !*succeeded,
            Response::LeaseGrant { revision, .. } | Response::LeaseRevoke { revision } => {
                *revision += 2
            }
        }
        tried += 1;
        if matches!(check(&h, BUDGET), Verdict::Violation { .. }) {
            caught += 1;
        }
    }
    eprintln!("random mutations caught: {caught} of {tried}");
    assert!(caught * 10 >= tried * 7, "only {caught} of {tried} caught");
}

#[test]
fn big_history_checks_within_budget() {
    let cfg = SimConfig {
        clients: 16,
        ops: 50_000,
        keys: 10,
        uncertain: 10,
        leases: true,
        compactions: true,
    };
    let h = generate(42, &cfg);
    let started = Instant::now();
    let verdict = check(&h, Duration::from_secs(120));
    let took = started.elapsed();
    eprintln!(
        "checked {} operations in {:?} ({:.0} ops/s)",
        h.operations.len(),
        took,
        h.operations.len() as f64 / took.as_secs_f64()
    );
    match verdict {
        Verdict::Ok { operations, .. } => assert_eq!(operations, h.operations.len()),
        other => panic!("expected Ok, got {other:?}"),
    }
}
