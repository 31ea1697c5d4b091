#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::*;

fn s(v: &str) -> String {
    v.to_string()
}

fn hash(v: &str) -> Option<PasswordHash> {
    Some(PasswordHash(v.as_bytes().to_vec()))
}

fn perm(t: PermType, key: &str, end: &str) -> Permission {
    Permission {
        perm_type: t,
        key: key.as_bytes().to_vec(),
        range_end: end.as_bytes().to_vec(),
    }
}

/// Applies every change in order, panicking on the first error.
fn build(changes: &[AuthChange]) -> AuthState {
    let mut st = AuthState::default();
    for c in changes {
        st.apply(c).unwrap();
    }
    st
}

fn user_add(name: &str) -> AuthChange {
    AuthChange::UserAdd {
        name: s(name),
        password_hash: hash("h"),
        no_password: false,
    }
}

fn grant(user: &str, role: &str) -> AuthChange {
    AuthChange::UserGrantRole {
        user: s(user),
        role: s(role),
    }
}

fn role_add(name: &str) -> AuthChange {
    AuthChange::RoleAdd { name: s(name) }
}

fn grant_perm(role: &str, p: Permission) -> AuthChange {
    AuthChange::RoleGrantPermission {
        role: s(role),
        perm: Some(p),
    }
}

/// Root exists with the root role, auth enabled.
fn enabled() -> AuthState {
    build(&[user_add("root"), grant("root", "root"), AuthChange::Enable])
}

/// The error string of applying `c` to `st` (the state must not change).
fn fails(st: &AuthState, c: AuthChange) -> String {
    let mut after = st.clone();
    let e = after.apply(&c).unwrap_err().to_string();
    assert_eq!(&after, st, "a failed {c:?} changed the state");
    e
}

#[test]
fn a_fresh_state_is_disabled_at_revision_1() {
    let st = AuthState::default();
    assert!(!st.enabled);
    assert_eq!(st.revision, 1);
}

#[test]
fn enable_needs_root_with_the_root_role() {
    let st = AuthState::default();
    assert_eq!(fails(&st, AuthChange::Enable), "root user does not exist");
    let st = build(&[user_add("root")]);
    assert_eq!(
        fails(&st, AuthChange::Enable),
        "root user does not have root role"
    );
    let mut st = build(&[user_add("root"), grant("root", "root")]);
    let rev = st.revision;
    assert!(st.apply(&AuthChange::Enable).unwrap());
    assert!(st.enabled);
    assert_eq!(st.revision, rev + 1);
    // Again: a silent no-op.
    assert!(!st.apply(&AuthChange::Enable).unwrap());
    assert_eq!(st.revision, rev + 1);
    assert!(st.apply(&AuthChange::Disable).unwrap());
    assert!(!st.enabled);
    assert!(!st.apply(&AuthChange::Disable).unwrap());
}

#[test]
fn user_rules_and_errors() {
    let st = build(&[user_add("a")]);
    assert_eq!(fails(&st, user_add("a")), "user name already exists");
    assert_eq!(fails(&st, user_add("")), "user name is empty");
    assert_eq!(
        fails(&st, AuthChange::UserDelete { name: s("x") }),
        "user name not found"
    );
    assert_eq!(
        fails(
            &st,
            AuthChange::UserChangePassword {
                name: s("x"),
                password_hash: hash("p")
            }
        ),
        "user name not found"
    );
    assert_eq!(fails(&st, grant("x", "r")), "user name not found");
    assert_eq!(fails(&st, grant("a", "r")), "role name not found");
    assert_eq!(
        fails(
            &st,
            AuthChange::UserRevokeRole {
                user: s("a"),
                role: s("r")
            }
        ),
        "role is not granted to the user"
    );
    assert_eq!(
        fails(
            &st,
            AuthChange::UserRevokeRole {
                user: s("x"),
                role: s("r")
            }
        ),
        "user name not found"
    );

    // Roles stay sorted; a second grant is a no-op; root needs no role entry.
    let mut st = build(&[user_add("a"), role_add("z"), role_add("b")]);
    for r in ["z", "b", "root"] {
        assert!(st.apply(&grant("a", r)).unwrap());
    }
    let rev = st.revision;
    assert!(!st.apply(&grant("a", "b")).unwrap());
    assert_eq!(st.revision, rev);
    assert_eq!(st.user("a").unwrap().roles, vec!["b", "root", "z"]);
    assert!(st.is_admin("a"));

    // A password change keeps the roles; no_password users keep no hash.
    st.apply(&AuthChange::UserChangePassword {
        name: s("a"),
        password_hash: hash("new"),
    })
    .unwrap();
    assert_eq!(st.user("a").unwrap().password_hash.0, b"new");
    assert_eq!(st.user("a").unwrap().roles.len(), 3);
    st.apply(&AuthChange::UserAdd {
        name: s("cn"),
        password_hash: hash("ignored"),
        no_password: true,
    })
    .unwrap();
    assert!(st.user("cn").unwrap().password_hash.0.is_empty());
    assert!(st.user("cn").unwrap().no_password);

    st.apply(&AuthChange::UserDelete { name: s("a") }).unwrap();
    assert!(st.user("a").is_none());
}

#[test]
fn root_cannot_lose_its_rights_while_enabled() {
    let st = enabled();
    assert_eq!(
        fails(&st, AuthChange::UserDelete { name: s("root") }),
        "invalid auth management"
    );
    assert_eq!(
        fails(&st, AuthChange::RoleDelete { name: s("root") }),
        "invalid auth management"
    );
    assert_eq!(
        fails(
            &st,
            AuthChange::UserRevokeRole {
                user: s("root"),
                role: s("root")
            }
        ),
        "invalid auth management"
    );
    // While disabled all three are allowed.
    let mut st = build(&[user_add("root"), role_add("root"), grant("root", "root")]);
    st.apply(&AuthChange::UserRevokeRole {
        user: s("root"),
        role: s("root"),
    })
    .unwrap();
    st.apply(&AuthChange::RoleDelete { name: s("root") })
        .unwrap();
    st.apply(&AuthChange::UserDelete { name: s("root") })
        .unwrap();
}

#[test]
fn role_rules_and_errors() {
    let st = build(&[role_add("r")]);
    assert_eq!(fails(&st, role_add("r")), "role name already exists");
    assert_eq!(fails(&st, role_add("")), "role name is empty");
    assert_eq!(
        fails(&st, AuthChange::RoleDelete { name: s("x") }),
        "role name not found"
    );
    assert_eq!(
        fails(&st, grant_perm("x", perm(PermType::Read, "a", ""))),
        "role name not found"
    );
    assert_eq!(
        fails(
            &st,
            AuthChange::RoleGrantPermission {
                role: s("r"),
                perm: None
            }
        ),
        "permission not given"
    );
    for bad in [
        perm(PermType::Read, "", ""),
        perm(PermType::Read, "b", "a"),
        perm(PermType::Read, "b", "b"),
    ] {
        assert_eq!(fails(&st, grant_perm("r", bad)), "invalid auth management");
    }
    assert_eq!(
        fails(
            &st,
            AuthChange::RoleRevokePermission {
                role: s("r"),
                key: b"a".to_vec(),
                range_end: vec![]
            }
        ),
        "permission is not granted to the role"
    );
    assert_eq!(
        fails(
            &st,
            AuthChange::RoleRevokePermission {
                role: s("x"),
                key: b"a".to_vec(),
                range_end: vec![]
            }
        ),
        "role name not found"
    );

    // Same (key, range_end) replaces the type; permissions stay sorted by key.
    let mut st = st;
    st.apply(&grant_perm("r", perm(PermType::Read, "m", "")))
        .unwrap();
    st.apply(&grant_perm("r", perm(PermType::Read, "c", "d")))
        .unwrap();
    st.apply(&grant_perm("r", perm(PermType::Write, "m", "")))
        .unwrap();
    st.apply(&grant_perm("r", perm(PermType::Read, "x", "\0")))
        .unwrap();
    let keys: Vec<_> = st
        .role("r")
        .unwrap()
        .permissions
        .iter()
        .map(|p| (p.key.clone(), p.perm_type))
        .collect();
    assert_eq!(
        keys,
        vec![
            (b"c".to_vec(), PermType::Read),
            (b"m".to_vec(), PermType::Write),
            (b"x".to_vec(), PermType::Read)
        ]
    );
    st.apply(&AuthChange::RoleRevokePermission {
        role: s("r"),
        key: b"c".to_vec(),
        range_end: b"d".to_vec(),
    })
    .unwrap();
    assert_eq!(st.role("r").unwrap().permissions.len(), 2);

    // Deleting a role revokes it from its users.
    st.apply(&user_add("u")).unwrap();
    st.apply(&grant("u", "r")).unwrap();
    st.apply(&AuthChange::RoleDelete { name: s("r") }).unwrap();
    assert!(st.user("u").unwrap().roles.is_empty());
}

#[test]
fn every_change_bumps_the_revision_once() {
    let mut st = AuthState::default();
    let changes = [
        user_add("root"),
        role_add("r"),
        grant("root", "root"),
        grant_perm("r", perm(PermType::Read, "a", "")),
        AuthChange::RoleRevokePermission {
            role: s("r"),
            key: b"a".to_vec(),
            range_end: vec![],
        },
        user_add("u"),
        grant("u", "r"),
        AuthChange::UserRevokeRole {
            user: s("u"),
            role: s("r"),
        },
        AuthChange::UserChangePassword {
            name: s("u"),
            password_hash: hash("x"),
        },
        AuthChange::RoleDelete { name: s("r") },
        AuthChange::UserDelete { name: s("u") },
        AuthChange::Enable,
        AuthChange::Disable,
    ];
    for (i, c) in changes.iter().enumerate() {
        assert!(st.apply(c).unwrap(), "{c:?}");
        assert_eq!(st.revision, 2 + i as u64, "{c:?}");
    }
}

#[test]
fn who_may_change() {
    // Disabled: anyone.
    let st = build(&[user_add("root"), grant("root", "root")]);
    assert!(st
        .changed_by(&Caller::Anonymous, &AuthChange::Enable)
        .unwrap()
        .is_some());
    // Enabled: the root role only.
    let mut st = enabled();
    st.apply(&user_add("u")).unwrap();
    let r = st.revision;
    let c = role_add("x");
    assert_eq!(
        st.changed_by(&Caller::Anonymous, &c)
            .unwrap_err()
            .to_string(),
        "user name is empty"
    );
    assert_eq!(
        st.changed_by(&Caller::user("u", r), &c)
            .unwrap_err()
            .to_string(),
        "permission denied"
    );
    assert_eq!(
        st.changed_by(&Caller::user("ghost", r), &c)
            .unwrap_err()
            .to_string(),
        "user name not found"
    );
    assert!(st
        .changed_by(&Caller::user("root", r), &c)
        .unwrap()
        .is_some());
    assert!(st.changed_by(&Caller::Internal, &c).unwrap().is_some());
}

#[test]
fn request_subjects() {
    let mut st = enabled();
    st.apply(&user_add("u")).unwrap();
    let r = st.revision;
    let check = |c: &Caller| {
        st.check(c, b"k", b"", PermType::Read)
            .map_err(|e| e.to_string())
    };
    assert_eq!(check(&Caller::Internal), Ok(()));
    assert_eq!(check(&Caller::Anonymous), Err(s("user name is empty")));
    assert_eq!(
        check(&Caller::user("u", r - 1)),
        Err(s("revision of auth store is old"))
    );
    assert_eq!(
        check(&Caller::user("ghost", r)),
        Err(s("permission denied"))
    );
    assert_eq!(check(&Caller::user("u", r)), Err(s("permission denied")));
    assert_eq!(check(&Caller::user("root", r)), Ok(()));
    // Disabled: everything goes.
    let mut off = st.clone();
    off.apply(&AuthChange::Disable).unwrap();
    assert!(off
        .check(&Caller::Anonymous, b"k", b"", PermType::Write)
        .is_ok());
}

#[test]
fn the_row_round_trips_and_damage_is_refused() {
    let mut st = enabled();
    st.apply(&role_add("r")).unwrap();
    st.apply(&grant_perm("r", perm(PermType::ReadWrite, "a", "\0")))
        .unwrap();
    st.apply(&AuthChange::UserAdd {
        name: s("cn"),
        password_hash: None,
        no_password: true,
    })
    .unwrap();
    st.apply(&grant("cn", "r")).unwrap();
    let row = st.encode();
    assert_eq!(AuthState::decode(&row).unwrap(), st);
    for i in 0..row.len() {
        let mut bad = row.clone();
        bad[i] ^= 0x40;
        assert!(matches!(AuthState::decode(&bad), Err(Error::Corrupt(_))));
    }
}

#[test]
fn debug_never_shows_a_password_hash() {
    let st = build(&[AuthChange::UserAdd {
        name: s("u"),
        password_hash: hash("$2a$10$secrethash"),
        no_password: false,
    }]);
    assert!(!format!("{st:?}").contains("secrethash"));
    assert!(!format!("{:?}", user_add("x")).contains("PasswordHash([")); // redacted
}

#[test]
fn coverage_examples() {
    let c = |perms: &[(&str, &str)], k: &str, e: &str| {
        covers(
            perms.iter().map(|(a, b)| (a.as_bytes(), b.as_bytes())),
            k.as_bytes(),
            e.as_bytes(),
        )
    };
    // A prefix [/a/, /a0) covers a key and a sub-range under it, not its neighbours.
    assert!(c(&[("/a/", "/a0")], "/a/x", ""));
    assert!(c(&[("/a/", "/a0")], "/a/", "/a0"));
    assert!(!c(&[("/a/", "/a0")], "/a0", ""));
    assert!(!c(&[("/a/", "/a0")], "/a/", "/b"));
    // Two adjacent ranges together cover their union; a gap does not.
    assert!(c(&[("a", "c"), ("c", "e")], "b", "d"));
    assert!(!c(&[("a", "c"), ("d", "e")], "b", "d"));
    // From-key.
    assert!(c(&[("m", "\0")], "z", "\0"));
    assert!(!c(&[("m", "\0")], "a", "\0"));
    assert!(!c(&[("m", "z")], "m", "\0"));
    // A single key covers only itself (and "k" + "\0" is not "k").
    assert!(c(&[("k", "")], "k", ""));
    assert!(!c(&[("k", "")], "k", "l"));
    assert!(c(&[("k", ""), ("k\0", "l")], "k", "l"));
    // An empty request range is checked as its key.
    assert!(c(&[("k", "")], "k", "a"));
    assert!(!c(&[], "k", ""));
}

/// The brute-force model: a key is in a permission by the definition of its range.
fn in_perm(k: &[u8], key: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        k == key
    } else if end == [0] {
        k >= key
    } else {
        k >= key && k < end
    }
}

/// Brute force: every key a gap could start at (the request's key and every permission's
/// end or successor of its key) that lies in the request must be in some permission. The
/// first uncovered key of a request is always one of these.
fn covers_brute(perms: &[(Vec<u8>, Vec<u8>)], key: &[u8], end: &[u8]) -> bool {
    let (key, end): (&[u8], &[u8]) = if !end.is_empty() && end != [0] && end <= key {
        (key, &[])
    } else {
        (key, end)
    };
    let mut candidates = vec![key.to_vec()];
    for (k, e) in perms {
        let mut succ = k.clone();
        succ.push(0);
        candidates.push(succ);
        candidates.push(e.clone());
    }
    candidates
        .iter()
        .filter(|c| in_perm(c, key, end))
        .all(|c| perms.iter().any(|(k, e)| in_perm(c, k, e)))
}

fn small_key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(vec![0u8, b'a', b'b', b'c']), 0..4)
}

fn range_end() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![Just(Vec::new()), Just(vec![0u8]), small_key()]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]
    #[test]
    fn coverage_matches_brute_force(
        perms in prop::collection::vec((small_key(), range_end()), 0..6),
        key in small_key(),
        end in range_end(),
    ) {
        let fast = covers(perms.iter().map(|(k, e)| (k.as_slice(), e.as_slice())), &key, &end);
        prop_assert_eq!(fast, covers_brute(&perms, &key, &end));
    }
}
