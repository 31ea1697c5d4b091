//! The request generator of one KV client: a ChaCha stream seeded from the run seed and the
//! client number picks each request, so one seed gives every client the same sequence of choices.
//! Some choices use what the client saw earlier (the `mod_revision` and value it last read for a
//! key, for compare-and-swap) and what all clients share (live leases, the latest revision), so
//! the requests themselves follow the answers the server gave.

use std::collections::HashMap;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::history::{Compare, Key, Outcome, Request, Response, TxnOp, TxnOpResult, Value};

/// TTL of every lease granted: long enough never to expire within a run.
pub const LEASE_TTL: i64 = 3600;

/// The keys clients write, `/registry/secrets/key0`..`/registry/secrets/key{n-1}`; all lie in
/// `[PREFIX, PREFIX_END)`. They are kube-apiserver's keys of Secrets, so that an
/// EncryptionConfiguration rule for `secrets` seals them (the `unopenable` fault).
pub fn key(i: usize) -> Key {
    format!("{PREFIX}{i}")
}

/// Start of the whole keyspace (as a prefix).
pub const PREFIX: &str = "/registry/secrets/key";
/// End of the whole keyspace: the prefix with its last byte incremented.
pub const PREFIX_END: &str = "/registry/secrets/kez";

/// A seeded random stream with the few draws the suite needs.
#[derive(Debug, Clone)]
pub struct Rng(ChaCha8Rng);

impl Rng {
    /// The stream for `stream` (a client number, or a fixed tag for the fault schedule) of run
    /// `seed`.
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        r.set_stream(stream);
        Rng(r)
    }

    /// Uniform in `0..n` (`n` > 0; 0 gives 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        self.0.next_u64() % n
    }

    /// Uniform in `lo..=hi` (`hi` < `lo` gives `lo`).
    pub fn range_i64(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            return lo;
        }
        let span = hi.abs_diff(lo).saturating_add(1);
        lo.saturating_add_unsigned(self.below(span))
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        let n = u64::try_from(items.len()).unwrap_or(u64::MAX);
        let i = usize::try_from(self.below(n)).unwrap_or(0);
        items.get(i)
    }
}

/// What all clients share and the generator may look at.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Highest revision any answer carried.
    pub revision: i64,
    /// Highest compaction revision the server acknowledged.
    pub compacted: i64,
    /// Leases granted and not (yet) revoked.
    pub leases: Vec<i64>,
}

/// What this client last saw of a key: its `mod_revision` (0 = absent) and value.
#[derive(Debug, Clone, Default)]
struct Seen {
    mod_revision: i64,
    value: Option<Value>,
}

/// Request generator of one KV client.
#[derive(Debug)]
pub struct Generator {
    rng: Rng,
    client: u32,
    seq: u64,
    keys: usize,
    value_bytes: usize,
    compactions: bool,
    seen: HashMap<Key, Seen>,
}

impl Generator {
    /// The generator of `client` in run `seed`, over `keys` keys.
    pub fn new(seed: u64, client: u32, keys: usize) -> Self {
        Generator {
            rng: Rng::new(seed, u64::from(client) + 1),
            client,
            seq: 0,
            keys: keys.max(1),
            value_bytes: 0,
            compactions: true,
            seen: HashMap::new(),
        }
    }

    /// Whether the client sends compactions (a quota run leaves compaction to the recovery
    /// of the alarm, so that the backend grows).
    pub fn with_compactions(mut self, on: bool) -> Self {
        self.compactions = on;
        self
    }

    /// Pads every value to at least `n` bytes (to fill a backend quickly).
    pub fn with_value_bytes(mut self, n: usize) -> Self {
        self.value_bytes = n;
        self
    }

    /// A value never written before in this run: `c{client}-{seq}`, padded with `.` to the
    /// configured size.
    fn value(&mut self) -> Value {
        self.seq += 1;
        let mut v = format!("c{}-{}", self.client, self.seq);
        if v.len() < self.value_bytes {
            v.push_str(&".".repeat(self.value_bytes - v.len()));
        }
        v
    }

    fn any_key(&mut self) -> Key {
        key(usize::try_from(self.rng.below(self.keys as u64)).unwrap_or(0))
    }

    /// A random delay in milliseconds between two requests (0..=max).
    pub fn think_ms(&mut self, max: u64) -> u64 {
        self.rng.below(max + 1)
    }

    /// The next request.
    pub fn next(&mut self, view: &View) -> Request {
        let roll = self.rng.below(1000);
        match roll {
            0..=259 => {
                let key = self.any_key();
                let lease = if !view.leases.is_empty() && self.rng.chance(30) {
                    self.rng.pick(&view.leases).copied().unwrap_or(0)
                } else {
                    0
                };
                let value = self.value();
                Request::Put { key, value, lease }
            }
            260..=499 => {
                if self.rng.chance(25) {
                    Request::Range {
                        key: PREFIX.to_string(),
                        end: Some(PREFIX_END.to_string()),
                    }
                } else {
                    Request::Range {
                        key: self.any_key(),
                        end: None,
                    }
                }
            }
            500..=599 => Request::Delete {
                key: self.any_key(),
            },
            600..=899 => self.txn(),
            900..=949 => Request::LeaseGrant { ttl: LEASE_TTL },
            950..=984 => match self.rng.pick(&view.leases).copied() {
                Some(id) => Request::LeaseRevoke { id },
                None => Request::LeaseGrant { ttl: LEASE_TTL },
            },
            _ if !self.compactions => Request::Range {
                key: self.any_key(),
                end: None,
            },
            _ => {
                // A recent revision, sometimes one already compacted or not yet reached.
                let back = self.rng.range_i64(-1, 15);
                let revision = (view.revision - back).max(1);
                Request::Compact { revision }
            }
        }
    }

    fn txn(&mut self) -> Request {
        let k = self.any_key();
        let seen = self.seen.get(&k).cloned().unwrap_or_default();
        let kind = self.rng.below(10);
        if kind < 5 || seen.value.is_none() && kind < 8 {
            // Compare-and-swap on mod_revision (0 = create if absent).
            let value = self.value();
            return Request::Txn {
                compares: vec![Compare::ModRevisionEquals {
                    key: k.clone(),
                    revision: seen.mod_revision,
                }],
                success: vec![TxnOp::Put {
                    key: k.clone(),
                    value,
                }],
                failure: vec![TxnOp::Get { key: k }],
            };
        }
        if kind < 8 {
            // Compare-and-swap on the value last seen.
            let value = self.value();
            return Request::Txn {
                compares: vec![Compare::ValueEquals {
                    key: k.clone(),
                    value: seen.value.unwrap_or_default(),
                }],
                success: vec![TxnOp::Put {
                    key: k.clone(),
                    value,
                }],
                failure: vec![TxnOp::Get { key: k }],
            };
        }
        // Two keys at once: move k's turn to another key.
        let mut other = self.any_key();
        if other == k {
            other = key((k[PREFIX.len()..].parse::<usize>().unwrap_or(0) + 1) % self.keys);
        }
        if other == k {
            // A single key space: a plain put-and-get.
            let value = self.value();
            return Request::Txn {
                compares: Vec::new(),
                success: vec![
                    TxnOp::Put {
                        key: k.clone(),
                        value,
                    },
                    TxnOp::Get { key: k },
                ],
                failure: Vec::new(),
            };
        }
        let value = self.value();
        Request::Txn {
            compares: vec![Compare::ModRevisionEquals {
                key: k.clone(),
                revision: seen.mod_revision,
            }],
            success: vec![
                TxnOp::Put {
                    key: k.clone(),
                    value,
                },
                TxnOp::Delete { key: other.clone() },
            ],
            failure: vec![TxnOp::Get { key: k }, TxnOp::Get { key: other }],
        }
    }

    /// Learns from an answer (what keys look like now) for later compare-and-swaps.
    pub fn observe(&mut self, req: &Request, outcome: &Outcome) {
        let Outcome::Ok(resp) = outcome else {
            return;
        };
        match (req, resp) {
            (Request::Put { key, value, .. }, Response::Put { revision }) => {
                self.seen.insert(
                    key.clone(),
                    Seen {
                        mod_revision: *revision,
                        value: Some(value.clone()),
                    },
                );
            }
            (Request::Range { key, end }, Response::Range { kvs, .. }) => {
                if end.is_none() && kvs.is_empty() {
                    self.seen.insert(key.clone(), Seen::default());
                }
                for kv in kvs {
                    self.seen.insert(
                        kv.key.clone(),
                        Seen {
                            mod_revision: kv.mod_revision,
                            value: Some(kv.value.clone()),
                        },
                    );
                }
            }
            (Request::Delete { key }, Response::Delete { .. }) => {
                self.seen.insert(key.clone(), Seen::default());
            }
            (
                Request::Txn {
                    success, failure, ..
                },
                Response::Txn {
                    revision,
                    succeeded,
                    results,
                },
            ) => {
                let ops = if *succeeded { success } else { failure };
                for (op, res) in ops.iter().zip(results) {
                    match (op, res) {
                        (TxnOp::Put { key, value }, TxnOpResult::Put) => {
                            self.seen.insert(
                                key.clone(),
                                Seen {
                                    mod_revision: *revision,
                                    value: Some(value.clone()),
                                },
                            );
                        }
                        (TxnOp::Delete { key }, TxnOpResult::Delete { .. }) => {
                            self.seen.insert(key.clone(), Seen::default());
                        }
                        (TxnOp::Get { key }, TxnOpResult::Get { kvs }) => {
                            let seen = kvs
                                .first()
                                .map(|kv| Seen {
                                    mod_revision: kv.mod_revision,
                                    value: Some(kv.value.clone()),
                                })
                                .unwrap_or_default();
                            self.seen.insert(key.clone(), seen);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_requests() {
        let view = View {
            revision: 40,
            compacted: 3,
            leases: vec![7, 9],
        };
        let mut a = Generator::new(5, 2, 10);
        let mut b = Generator::new(5, 2, 10);
        let mut c = Generator::new(6, 2, 10);
        let ra: Vec<Request> = (0..200).map(|_| a.next(&view)).collect();
        let rb: Vec<Request> = (0..200).map(|_| b.next(&view)).collect();
        let rc: Vec<Request> = (0..200).map(|_| c.next(&view)).collect();
        assert_eq!(ra, rb);
        assert_ne!(ra, rc);
    }

    #[test]
    fn values_are_unique_and_mix_is_complete() {
        let view = View {
            revision: 40,
            compacted: 3,
            leases: vec![7],
        };
        let mut g = Generator::new(1, 0, 10);
        let mut values = std::collections::HashSet::new();
        let mut kinds = std::collections::HashSet::new();
        for _ in 0..5000 {
            let r = g.next(&view);
            kinds.insert(std::mem::discriminant(&r));
            match &r {
                Request::Put { value, .. } => assert!(values.insert(value.clone())),
                Request::Txn { success, .. } => {
                    for op in success {
                        if let TxnOp::Put { value, .. } = op {
                            assert!(values.insert(value.clone()));
                        }
                    }
                }
                _ => {}
            }
        }
        assert_eq!(kinds.len(), 7, "every request kind appears");
    }
}
