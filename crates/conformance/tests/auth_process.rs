//! Auth on a real `coffer serve` process: the users, roles, permissions and the enabled switch
//! survive a clean restart and a SIGKILL right after an acknowledged change; and with
//! `RUST_LOG=trace` no password or token used in the flows reaches the log.

use std::time::Duration;

use coffer_conformance::etcdctl;
use coffer_conformance::{CofferOptions, CofferProcess};

/// Runs etcdctl against `endpoint` and returns its stdout; a failure panics with its output.
fn ctl(endpoint: &str, args: &[&str]) -> String {
    let out = etcdctl::run(endpoint, args, None).expect("etcdctl");
    assert_eq!(out.code, 0, "{args:?}: {out:?}");
    out.stdout.trim().to_owned()
}

/// Runs etcdctl expecting a failure; returns its stderr.
fn ctl_fails(endpoint: &str, args: &[&str]) -> String {
    let out = etcdctl::run(endpoint, args, None).expect("etcdctl");
    assert_ne!(out.code, 0, "{args:?} succeeded: {out:?}");
    out.stderr
}

/// root, alice (READ on `/a/`), a key `/a/1`, auth enabled.
fn set_up(endpoint: &str) {
    ctl(endpoint, &["put", "/a/1", "one"]);
    ctl(endpoint, &["user", "add", "root:R00t-pw-7"]);
    ctl(endpoint, &["user", "add", "alice:Al1ce-pw-9"]);
    ctl(endpoint, &["role", "add", "reader"]);
    ctl(
        endpoint,
        &[
            "role",
            "grant-permission",
            "reader",
            "read",
            "/a/",
            "--prefix",
        ],
    );
    ctl(endpoint, &["user", "grant-role", "alice", "reader"]);
    ctl(endpoint, &["user", "grant-role", "root", "root"]);
    ctl(endpoint, &["auth", "enable"]);
}

/// What a restarted server must still know.
fn check_state(endpoint: &str, users: &str) {
    const ROOT: &str = "--user=root:R00t-pw-7";
    assert_eq!(ctl(endpoint, &[ROOT, "user", "list"]), users);
    // Role root was granted without being created (etcd allows it), so it is not listed.
    assert_eq!(ctl(endpoint, &[ROOT, "role", "list"]), "reader");
    assert_eq!(
        ctl(endpoint, &[ROOT, "role", "get", "reader"]),
        "Role reader\nKV Read:\n\t[/a/, /a0) (prefix /a/)\nKV Write:"
    );
    assert_eq!(
        ctl(endpoint, &["--user=alice:Al1ce-pw-9", "get", "/a/1"]),
        "/a/1\none"
    );
    let denied = ctl_fails(endpoint, &["--user=alice:Al1ce-pw-9", "put", "/a/1", "x"]);
    assert!(denied.contains("etcdserver: permission denied"), "{denied}");
    let anonymous = ctl_fails(endpoint, &["get", "/a/1"]);
    assert!(
        anonymous.contains("etcdserver: user name is empty"),
        "auth is still enabled: {anonymous}"
    );
}

#[test]
fn auth_state_survives_restart_and_sigkill() {
    let mut coffer = CofferProcess::start(CofferOptions::default()).expect("start coffer");
    let endpoint = coffer.endpoint();
    set_up(&endpoint);
    check_state(&endpoint, "alice\nroot");

    coffer
        .terminate(Duration::from_secs(10))
        .expect("clean stop");
    coffer.restart().expect("restart");
    check_state(&endpoint, "alice\nroot");

    // A change acknowledged just before a SIGKILL is kept.
    ctl(
        &endpoint,
        &["--user=root:R00t-pw-7", "user", "add", "bob:B0b-pw-3"],
    );
    coffer.kill();
    coffer.restart().expect("restart after SIGKILL");
    check_state(&endpoint, "alice\nbob\nroot");
    assert_eq!(
        ctl(&endpoint, &["--user=bob:B0b-pw-3", "user", "get", "bob"]),
        "User: bob\nRoles:"
    );
}

#[test]
fn no_password_or_token_in_a_trace_log() {
    use coffer_proto::auth_client::AuthClient;
    use coffer_proto::kv_client::KvClient;
    use coffer_proto::{AuthenticateRequest, PutRequest, RangeRequest};
    let coffer = CofferProcess::start(CofferOptions {
        env: vec![("RUST_LOG".into(), "trace".into())],
        extra_args: vec!["--log-level".into(), "trace".into()],
        ..CofferOptions::default()
    })
    .expect("start coffer");
    let endpoint = coffer.endpoint();
    set_up(&endpoint);
    let mut secrets = vec![
        "R00t-pw-7".to_owned(),
        "Al1ce-pw-9".to_owned(),
        "Wr0ng-pw-1".to_owned(),
        "N3w-pw-5".to_owned(),
    ];
    // etcdctl flows: reads, a denial, a wrong password, a password change.
    ctl(&endpoint, &["--user=alice:Al1ce-pw-9", "get", "/a/1"]);
    ctl_fails(&endpoint, &["--user=alice:Al1ce-pw-9", "put", "/a/1", "x"]);
    ctl_fails(&endpoint, &["--user=alice:Wr0ng-pw-1", "get", "/a/1"]);
    let out = etcdctl::run(
        &endpoint,
        &[
            "--user=root:R00t-pw-7",
            "user",
            "passwd",
            "alice",
            "--interactive=false",
        ],
        Some("N3w-pw-5\n"),
    )
    .expect("etcdctl");
    assert_eq!(out.code, 0, "{out:?}");
    // gRPC: tokens, used for an allowed and a denied request, and a made-up one.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let channel = coffer_conformance::client::connect(&endpoint)
            .await
            .expect("connect");
        let mut auth = AuthClient::new(channel.clone());
        let mut kv = KvClient::new(channel);
        for (name, password) in [("root", "R00t-pw-7"), ("alice", "N3w-pw-5")] {
            let token = auth
                .authenticate(AuthenticateRequest {
                    name: name.into(),
                    password: password.into(),
                })
                .await
                .expect("authenticate")
                .into_inner()
                .token;
            for key in ["/a/1", "/b/1"] {
                let mut req = tonic::Request::new(PutRequest {
                    key: key.into(),
                    value: b"v".to_vec(),
                    ..Default::default()
                });
                req.metadata_mut()
                    .insert("token", token.parse().expect("token"));
                let _ = kv.put(req).await;
            }
            secrets.push(token);
        }
        let forged = "ForgedTokenXyzzyPlugh.42".to_owned();
        let mut req = tonic::Request::new(RangeRequest {
            key: b"/a/1".to_vec(),
            ..Default::default()
        });
        req.metadata_mut()
            .insert("token", forged.parse().expect("token"));
        let e = kv.range(req).await.expect_err("forged token");
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        secrets.push(forged);
    });
    let log = coffer.log();
    // The log is the trace log (so the test can see what it checks), with the denials in it.
    assert!(log.contains("TRACE"), "not a trace log");
    assert!(log.contains("permission denied"), "the denials are logged");
    for secret in &secrets {
        assert!(!log.contains(secret.as_str()), "the log holds a secret");
        // Nor the random part of a simple token without its counter.
        if let Some((letters, _)) = secret.split_once('.') {
            assert!(!log.contains(letters), "the log holds a token's letters");
        }
    }
}
