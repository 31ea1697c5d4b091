//! Shared by the checker tests: builders for hand-written histories and a simulator that
//! generates random linearizable histories (its own small model of etcd, written apart from
//! the checker's so the two check each other).

#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

use coffer_robustness::history::*;

pub const MS: u64 = 1_000_000;

pub fn kv(key: &str, value: &str, create: i64, modr: i64, version: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: value.into(),
        create_revision: create,
        mod_revision: modr,
        version,
        lease: 0,
    }
}

fn op(client: u32, call: u64, ret: Option<u64>, request: Request, outcome: Outcome) -> Operation {
    Operation {
        client,
        call: call * MS,
        ret: ret.map(|r| r * MS),
        request,
        outcome,
    }
}

pub fn put(client: u32, call: u64, ret: u64, key: &str, value: &str, rev: i64) -> Operation {
    op(
        client,
        call,
        Some(ret),
        Request::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
        },
        Outcome::Ok(Response::Put { revision: rev }),
    )
}

pub fn put_lease(
    client: u32,
    call: u64,
    ret: u64,
    key: &str,
    value: &str,
    lease: i64,
    rev: i64,
) -> Operation {
    op(
        client,
        call,
        Some(ret),
        Request::Put {
            key: key.into(),
            value: value.into(),
            lease,
        },
        Outcome::Ok(Response::Put { revision: rev }),
    )
}

pub fn put_unknown(client: u32, call: u64, key: &str, value: &str) -> Operation {
    op(
        client,
        call,
        None,
        Request::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
        },
        Outcome::Unknown("context deadline exceeded".into()),
    )
}

pub fn get(client: u32, call: u64, ret: u64, key: &str, rev: i64, kvs: Vec<KeyValue>) -> Operation {
    op(
        client,
        call,
        Some(ret),
        Request::Range {
            key: key.into(),
            end: None,
        },
        Outcome::Ok(Response::Range { revision: rev, kvs }),
    )
}

pub fn delete(client: u32, call: u64, ret: u64, key: &str, rev: i64, deleted: i64) -> Operation {
    op(
        client,
        call,
        Some(ret),
        Request::Delete { key: key.into() },
        Outcome::Ok(Response::Delete {
            revision: rev,
            deleted,
        }),
    )
}

pub fn delete_unknown(client: u32, call: u64, key: &str) -> Operation {
    op(
        client,
        call,
        None,
        Request::Delete { key: key.into() },
        Outcome::Unknown("connection reset".into()),
    )
}

/// `if mod(key) == expect then put key=value else get key`.
#[allow(clippy::too_many_arguments)]
pub fn cas(
    client: u32,
    call: u64,
    ret: u64,
    key: &str,
    expect: i64,
    value: &str,
    rev: i64,
    succeeded: bool,
    got: Vec<KeyValue>,
) -> Operation {
    op(
        client,
        call,
        Some(ret),
        Request::Txn {
            compares: vec![Compare::ModRevisionEquals {
                key: key.into(),
                revision: expect,
            }],
            success: vec![TxnOp::Put {
                key: key.into(),
                value: value.into(),
            }],
            failure: vec![TxnOp::Get { key: key.into() }],
        },
        Outcome::Ok(Response::Txn {
            revision: rev,
            succeeded,
            results: if succeeded {
                vec![TxnOpResult::Put]
            } else {
                vec![TxnOpResult::Get { kvs: got }]
            },
        }),
    )
}

pub fn grant(client: u32, call: u64, ret: u64, id: i64, rev: i64) -> Operation {
    op(
        client,
        call,
        Some(ret),
        Request::LeaseGrant { ttl: 600 },
        Outcome::Ok(Response::LeaseGrant { revision: rev, id }),
    )
}

pub fn revoke(client: u32, call: u64, ret: u64, id: i64, rev: i64) -> Operation {
    op(
        client,
        call,
        Some(ret),
        Request::LeaseRevoke { id },
        Outcome::Ok(Response::LeaseRevoke { revision: rev }),
    )
}

pub fn compact(client: u32, call: u64, ret: u64, to: i64, rev: i64) -> Operation {
    op(
        client,
        call,
        Some(ret),
        Request::Compact { revision: to },
        Outcome::Ok(Response::Compact { revision: rev }),
    )
}

pub fn history(ops: Vec<Operation>) -> History {
    History {
        operations: ops,
        watches: Vec::new(),
        ..Default::default()
    }
}

/// SplitMix64: a small deterministic generator for the simulator.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// What the simulator generates.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub clients: u32,
    pub ops: usize,
    pub keys: usize,
    /// Per mille of requests left without an answer (half of them applied).
    pub uncertain: u64,
    pub leases: bool,
    pub compactions: bool,
}

#[derive(Default)]
struct Sim {
    revision: i64,
    kvs: BTreeMap<String, KeyValue>,
    leases: BTreeSet<i64>,
    compact: i64,
    next_lease: i64,
}

impl Sim {
    fn put(&mut self, key: &str, value: &str, lease: i64, rev: i64) {
        let prev = self.kvs.get(key);
        let kv = KeyValue {
            key: key.into(),
            value: value.into(),
            create_revision: prev.map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.map_or(1, |p| p.version + 1),
            lease,
        };
        self.kvs.insert(key.into(), kv);
    }

    /// Applies `req`; returns its outcome.
    fn apply(&mut self, req: &Request) -> Outcome {
        let next = self.revision + 1;
        match req {
            Request::Put { key, value, lease } => {
                if *lease != 0 && !self.leases.contains(lease) {
                    return Outcome::Failed("etcdserver: requested lease not found".into());
                }
                self.put(key, value, *lease, next);
                self.revision = next;
                Outcome::Ok(Response::Put { revision: next })
            }
            Request::Range { key, end } => {
                let kvs = match end {
                    None => self.kvs.get(key).cloned().into_iter().collect(),
                    Some(end) => self
                        .kvs
                        .iter()
                        .filter(|(k, _)| k.as_str() >= key.as_str() && k.as_str() < end.as_str())
                        .map(|(_, v)| v.clone())
                        .collect(),
                };
                Outcome::Ok(Response::Range {
                    revision: self.revision,
                    kvs,
                })
            }
            Request::Delete { key } => {
                let deleted = i64::from(self.kvs.remove(key).is_some());
                self.revision += deleted;
                Outcome::Ok(Response::Delete {
                    revision: self.revision,
                    deleted,
                })
            }
            Request::Txn {
                compares,
                success,
                failure,
            } => {
                let ok = compares.iter().all(|c| match c {
                    Compare::ModRevisionEquals { key, revision } => {
                        self.kvs.get(key).map_or(0, |k| k.mod_revision) == *revision
                    }
                    Compare::ValueEquals { key, value } => {
                        self.kvs.get(key).is_some_and(|k| &k.value == value)
                    }
                });
                let mut wrote = false;
                let mut results = Vec::new();
                for op in if ok { success } else { failure } {
                    match op {
                        TxnOp::Put { key, value } => {
                            self.put(key, value, 0, next);
                            wrote = true;
                            results.push(TxnOpResult::Put);
                        }
                        TxnOp::Get { key } => results.push(TxnOpResult::Get {
                            kvs: self.kvs.get(key).cloned().into_iter().collect(),
                        }),
                        TxnOp::Delete { key } => {
                            let d = self.kvs.remove(key).is_some();
                            wrote |= d;
                            results.push(TxnOpResult::Delete {
                                deleted: i64::from(d),
                            });
                        }
                    }
                }
                if wrote {
                    self.revision = next;
                }
                Outcome::Ok(Response::Txn {
                    revision: self.revision,
                    succeeded: ok,
                    results,
                })
            }
            Request::LeaseGrant { .. } => {
                self.next_lease += 1;
                let id = 7000 + self.next_lease;
                self.leases.insert(id);
                Outcome::Ok(Response::LeaseGrant {
                    revision: self.revision,
                    id,
                })
            }
            Request::LeaseRevoke { id } => {
                if !self.leases.remove(id) {
                    return Outcome::Failed("etcdserver: requested lease not found".into());
                }
                let before = self.kvs.len();
                self.kvs.retain(|_, kv| kv.lease != *id);
                if self.kvs.len() < before {
                    self.revision = next;
                }
                Outcome::Ok(Response::LeaseRevoke {
                    revision: self.revision,
                })
            }
            Request::Compact { revision } => {
                if *revision <= self.compact {
                    return Outcome::Failed(
                        "etcdserver: mvcc: required revision has been compacted".into(),
                    );
                }
                if *revision > self.revision {
                    return Outcome::Failed(
                        "etcdserver: mvcc: required revision is a future revision".into(),
                    );
                }
                self.compact = *revision;
                Outcome::Ok(Response::Compact {
                    revision: self.revision,
                })
            }
        }
    }
}

#[derive(Default, Clone)]
struct Client {
    seen: HashMap<String, KeyValue>,
    leases: Vec<i64>,
    revision: i64,
}

enum Event {
    Call(u32),
    Apply(usize),
    Return(usize),
}

fn request(rng: &mut Rng, c: &Client, cfg: &SimConfig, client: u32, n: usize) -> Request {
    let key = |rng: &mut Rng| format!("k{}", rng.below(cfg.keys as u64));
    let value = format!("v{client}.{n}");
    let roll = rng.below(100);
    match roll {
        0..=29 => {
            let lease = if cfg.leases && !c.leases.is_empty() && rng.chance(300) {
                c.leases[rng.below(c.leases.len() as u64) as usize]
            } else {
                0
            };
            Request::Put {
                key: key(rng),
                value,
                lease,
            }
        }
        30..=54 => Request::Range {
            key: key(rng),
            end: None,
        },
        55..=59 => Request::Range {
            key: "k".into(),
            end: Some("l".into()),
        },
        60..=68 => Request::Delete { key: key(rng) },
        69..=88 => {
            let k = key(rng);
            let other = key(rng);
            let compares = if rng.chance(500) {
                vec![Compare::ModRevisionEquals {
                    key: k.clone(),
                    revision: c.seen.get(&k).map_or(0, |kv| kv.mod_revision),
                }]
            } else {
                vec![Compare::ValueEquals {
                    key: k.clone(),
                    value: c.seen.get(&k).map_or("none".into(), |kv| kv.value.clone()),
                }]
            };
            let mut success = vec![TxnOp::Put {
                key: k.clone(),
                value,
            }];
            if other != k {
                success.push(if rng.chance(500) {
                    TxnOp::Get { key: other }
                } else {
                    TxnOp::Delete { key: other }
                });
            }
            Request::Txn {
                compares,
                success,
                failure: vec![TxnOp::Get { key: k }],
            }
        }
        89..=92 if cfg.leases => Request::LeaseGrant { ttl: 600 },
        93..=95 if cfg.leases && !c.leases.is_empty() => Request::LeaseRevoke {
            id: c.leases[rng.below(c.leases.len() as u64) as usize],
        },
        96..=97 if cfg.compactions && c.revision > 3 => Request::Compact {
            revision: c.revision - rng.below(3) as i64,
        },
        _ => Request::Range {
            key: key(rng),
            end: None,
        },
    }
}

/// Generates a linearizable history: clients send requests with random think time; each
/// request takes effect at a random instant between its call and return (an uncertain one
/// half of the time not at all) in the simulator, which answers it.
pub fn generate(seed: u64, cfg: &SimConfig) -> History {
    let mut rng = Rng::new(seed);
    let mut sim = Sim {
        revision: 1,
        ..Sim::default()
    };
    let mut clients = vec![Client::default(); cfg.clients as usize];
    let mut ops: Vec<Operation> = Vec::new();
    let mut apply_at: Vec<Option<u64>> = Vec::new();
    let mut heap: BinaryHeap<Reverse<(u64, u64, usize)>> = BinaryHeap::new();
    let mut events: Vec<Event> = Vec::new();
    let mut seq = 0u64;
    let mut push = |heap: &mut BinaryHeap<Reverse<(u64, u64, usize)>>,
                    events: &mut Vec<Event>,
                    t: u64,
                    e: Event| {
        seq += 1;
        events.push(e);
        heap.push(Reverse((t, seq, events.len() - 1)));
    };
    for c in 0..cfg.clients {
        let t = rng.below(50_000);
        push(&mut heap, &mut events, t, Event::Call(c));
    }
    let mut issued = 0usize;
    while let Some(Reverse((t, _, e))) = heap.pop() {
        match events[e] {
            Event::Call(c) => {
                if issued >= cfg.ops {
                    continue;
                }
                issued += 1;
                let req = request(&mut rng, &clients[c as usize], cfg, c, issued);
                let apply = t + 1 + rng.below(200_000);
                let uncertain = rng.chance(cfg.uncertain);
                let applied = !uncertain || rng.chance(500);
                let ret = if uncertain {
                    None
                } else {
                    Some(apply + 1 + rng.below(200_000))
                };
                ops.push(Operation {
                    client: c,
                    call: t,
                    ret,
                    request: req,
                    outcome: Outcome::Unknown("context deadline exceeded".into()),
                });
                apply_at.push(applied.then_some(apply));
                let i = ops.len() - 1;
                if applied {
                    push(&mut heap, &mut events, apply, Event::Apply(i));
                }
                let back = ret.unwrap_or(apply + 300_000);
                push(&mut heap, &mut events, back, Event::Return(i));
            }
            Event::Apply(i) => {
                let outcome = sim.apply(&ops[i].request);
                if ops[i].ret.is_some() {
                    ops[i].outcome = outcome;
                }
            }
            Event::Return(i) => {
                let c = ops[i].client;
                let cl = &mut clients[c as usize];
                if let Outcome::Ok(resp) = &ops[i].outcome {
                    match resp {
                        Response::Range { kvs, revision } => {
                            cl.revision = *revision;
                            for kv in kvs {
                                cl.seen.insert(kv.key.clone(), kv.clone());
                            }
                        }
                        Response::LeaseGrant { id, revision } => {
                            cl.leases.push(*id);
                            cl.revision = *revision;
                        }
                        Response::Put { revision } | Response::Delete { revision, .. } => {
                            cl.revision = *revision
                        }
                        _ => {}
                    }
                }
                let think = rng.below(30_000);
                push(&mut heap, &mut events, t + think, Event::Call(c));
            }
        }
    }
    let _ = apply_at;
    History {
        operations: ops,
        watches: Vec::new(),
        ..Default::default()
    }
}
