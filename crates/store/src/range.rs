//! etcd's Range semantics (reference §1.2) over a list of candidate keys, shared by plain reads
//! and by Range ops inside a Txn: what to fetch, the min/max filters, sorting (including the
//! quirk that a non-KEY target with no order sorts only the first `limit + 1` keys), `limit`
//! and `more`, `count_only`, and `keys_only`. Values are loaded through a callback, only when
//! a reply or a VALUE sort needs them.

use std::cmp::Ordering;

use coffer_proto::mvccpb::KeyValue;
use coffer_proto::RangeRequest;

use crate::index::Entry;
use crate::Error;

const ORDER_NONE: i32 = 0;
const ORDER_ASCEND: i32 = 1;
const ORDER_DESCEND: i32 = 2;
const TARGET_KEY: i32 = 0;
const TARGET_VERSION: i32 = 1;
const TARGET_CREATE: i32 = 2;
const TARGET_MOD: i32 = 3;
const TARGET_VALUE: i32 = 4;

/// A key visible at the read revision, before filters and sorting.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The key.
    pub key: Vec<u8>,
    /// Its visible revision.
    pub entry: Entry,
    /// The plaintext when the caller already has it (a write earlier in the same group).
    pub plain: Option<Vec<u8>>,
}

/// How many candidates a range must collect, decided on the request alone as etcd does.
#[derive(Debug, Clone, Copy)]
pub struct Collect {
    /// Maximum candidates to collect (`None` = all).
    pub max: Option<usize>,
    /// Only the count is wanted.
    pub count_only: bool,
}

impl Collect {
    /// What `req` needs collected.
    pub fn for_request(req: &RangeRequest) -> Self {
        let fetch_all = req.sort_order != ORDER_NONE
            || req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        let max = if fetch_all || req.limit <= 0 {
            None
        } else {
            Some(
                usize::try_from(req.limit)
                    .unwrap_or(usize::MAX)
                    .saturating_add(1),
            )
        };
        Collect {
            max,
            count_only: req.count_only,
        }
    }

    /// Whether one more candidate (after `have`) should be collected.
    pub fn wants(&self, have: usize) -> bool {
        !self.count_only && self.max.is_none_or(|m| have < m)
    }

    /// Whether values will be read at all for these candidates.
    pub fn needs_values(&self, req: &RangeRequest) -> bool {
        !self.count_only && (!req.keys_only || sort_target(req) == Some(TARGET_VALUE))
    }
}

/// The effective sort target, or `None` for natural key order.
fn sort_target(req: &RangeRequest) -> Option<i32> {
    let order = effective_order(req);
    if order == ORDER_NONE {
        None
    } else {
        Some(req.sort_target)
    }
}

fn effective_order(req: &RangeRequest) -> i32 {
    if req.sort_target != TARGET_KEY && req.sort_order == ORDER_NONE {
        ORDER_ASCEND
    } else {
        req.sort_order
    }
}

/// Applies filters, sort, limit and `keys_only` to the collected candidates and builds the
/// KeyValues. Returns `(kvs, more)`.
pub fn finish(
    req: &RangeRequest,
    mut cands: Vec<Candidate>,
    load: &mut dyn FnMut(&Candidate) -> Result<Vec<u8>, Error>,
) -> Result<(Vec<KeyValue>, bool), Error> {
    if req.count_only {
        return Ok((Vec::new(), false));
    }
    cands.retain(|c| {
        let (m, cr) = (c.entry.rev.main, c.entry.create);
        !((req.max_mod_revision != 0 && m > req.max_mod_revision)
            || (req.min_mod_revision != 0 && m < req.min_mod_revision)
            || (req.max_create_revision != 0 && cr > req.max_create_revision)
            || (req.min_create_revision != 0 && cr < req.min_create_revision))
    });

    let order = effective_order(req);
    let target = sort_target(req);
    if target == Some(TARGET_VALUE) {
        for c in cands.iter_mut() {
            if c.plain.is_none() {
                c.plain = Some(load(c)?);
            }
        }
    }
    let cmp: Option<fn(&Candidate, &Candidate) -> Ordering> = match target {
        Some(TARGET_KEY) => Some(|a, b| a.key.cmp(&b.key)),
        Some(TARGET_VERSION) => Some(|a, b| a.entry.version.cmp(&b.entry.version)),
        Some(TARGET_CREATE) => Some(|a, b| a.entry.create.cmp(&b.entry.create)),
        Some(TARGET_MOD) => Some(|a, b| a.entry.rev.main.cmp(&b.entry.rev.main)),
        Some(TARGET_VALUE) => Some(|a, b| a.plain.cmp(&b.plain)),
        _ => None,
    };
    if let Some(cmp) = cmp {
        match order {
            ORDER_ASCEND => cands.sort_by(cmp),
            ORDER_DESCEND => cands.sort_by(|a, b| cmp(b, a)),
            _ => {}
        }
    }

    let mut more = false;
    if req.limit > 0 {
        let limit = usize::try_from(req.limit).unwrap_or(usize::MAX);
        if cands.len() > limit {
            cands.truncate(limit);
            more = true;
        }
    }

    let mut kvs = Vec::with_capacity(cands.len());
    for mut c in cands {
        let value = if req.keys_only {
            Vec::new()
        } else {
            match c.plain.take() {
                Some(v) => v,
                None => load(&c)?,
            }
        };
        kvs.push(KeyValue {
            key: c.key,
            create_revision: c.entry.create,
            mod_revision: c.entry.rev.main,
            version: c.entry.version,
            value,
            lease: c.entry.lease,
        });
    }
    Ok((kvs, more))
}

/// The candidates of `req` visible at revision `at` in the index, and how many keys match.
pub(crate) fn collect(
    ix: &crate::index::Index,
    req: &RangeRequest,
    at: i64,
    collect: &Collect,
) -> (Vec<Candidate>, i64) {
    let mut cands = Vec::new();
    let mut count = 0i64;
    ix.visit(&req.key, &req.range_end, at, |k, entry| {
        count += 1;
        if collect.wants(cands.len()) {
            cands.push(Candidate {
                key: k.to_vec(),
                entry,
                plain: None,
            });
        }
        true
    });
    (cands, count)
}
