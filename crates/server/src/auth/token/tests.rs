use super::*;
use crate::auth::FakeClock;
use std::process::Command;

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Runs the openssl CLI (RSA keys: ring cannot generate them).
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl CLI");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

fn spec(method: &str, priv_key: Option<&Path>, pub_key: Option<&Path>) -> JwtSpec {
    JwtSpec {
        sign_method: method.into(),
        pub_key: pub_key.map(Path::to_owned),
        priv_key: priv_key.map(Path::to_owned),
        ttl: DEFAULT_JWT_TTL,
        unknown: vec![],
    }
}

/// Key files for every family: (private, public) per algorithm family.
struct Keys {
    _dir: tempfile::TempDir,
    hmac: PathBuf,
    rsa: (PathBuf, PathBuf),
    rsa_pkcs1: PathBuf,
    rsa_other_pub: PathBuf,
    p256: (PathBuf, PathBuf),
    p384: (PathBuf, PathBuf),
    ed: (PathBuf, PathBuf),
    p256_sec1: PathBuf,
}

fn keys() -> Keys {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hmac = write(d, "hmac.key", b"a shared secret of some length");
    openssl(
        d,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "rsa.key",
        ],
    );
    openssl(d, &["pkey", "-in", "rsa.key", "-pubout", "-out", "rsa.pub"]);
    openssl(
        d,
        &["rsa", "-in", "rsa.key", "-traditional", "-out", "rsa1.key"],
    );
    openssl(
        d,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "other.key",
        ],
    );
    openssl(
        d,
        &["pkey", "-in", "other.key", "-pubout", "-out", "other.pub"],
    );
    openssl(
        d,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "sec1.key",
        ],
    );
    for (name, algorithm, option) in [
        ("p256", "EC", "ec_paramgen_curve:P-256"),
        ("p384", "EC", "ec_paramgen_curve:P-384"),
        ("ed", "ED25519", ""),
    ] {
        let out = format!("{name}.key");
        let mut args = vec!["genpkey", "-algorithm", algorithm, "-out", &out];
        if !option.is_empty() {
            args.extend(["-pkeyopt", option]);
        }
        openssl(d, &args);
        let public = format!("{name}.pub");
        openssl(d, &["pkey", "-in", &out, "-pubout", "-out", &public]);
    }
    let pair = |name: &str| (d.join(format!("{name}.key")), d.join(format!("{name}.pub")));
    Keys {
        hmac,
        rsa: (d.join("rsa.key"), d.join("rsa.pub")),
        rsa_pkcs1: d.join("rsa1.key"),
        rsa_other_pub: d.join("other.pub"),
        p256: pair("p256"),
        p384: pair("p384"),
        ed: pair("ed"),
        p256_sec1: d.join("sec1.key"),
        _dir: dir,
    }
}

#[test]
fn parses_specs_like_etcd() {
    assert_eq!(TokenSpec::parse("simple").unwrap(), TokenSpec::Simple);
    // etcd ignores options after simple.
    assert_eq!(TokenSpec::parse("simple,x=y").unwrap(), TokenSpec::Simple);
    let TokenSpec::Jwt(j) = TokenSpec::parse(
        "jwt,pub-key=/k/a.pub,priv-key=/k/a.key,sign-method=RS256,ttl=10m,colour=blue",
    )
    .unwrap() else {
        panic!("not jwt")
    };
    assert_eq!(j.sign_method, "RS256");
    assert_eq!(j.pub_key.as_deref(), Some(Path::new("/k/a.pub")));
    assert_eq!(j.priv_key.as_deref(), Some(Path::new("/k/a.key")));
    assert_eq!(j.ttl, Duration::from_secs(600));
    assert_eq!(j.unknown, vec!["colour".to_owned()]);
    let TokenSpec::Jwt(j) = TokenSpec::parse("jwt,sign-method=HS256,ttl=").unwrap() else {
        panic!("not jwt")
    };
    assert_eq!(j.ttl, DEFAULT_JWT_TTL);
    assert_eq!(j.priv_key, None);

    for bad in [
        "",
        "jwt2",
        "Simple",
        "jwt,ttl",
        "jwt,sign-method=HS256,priv-key=a=b",
        "jwt,ttl=1m,ttl=2m",
        "jwt,ttl=soon",
        "jwt,ttl=-1s",
        "jwt,ttl=0s",
    ] {
        let e = TokenSpec::parse(bad).unwrap_err();
        assert!(
            matches!(e, TokenConfigError::InvalidOptions(_)),
            "{bad:?}: {e}"
        );
    }
}

#[test]
fn simple_tokens_look_like_etcds_and_count_up() {
    let t = SimpleTokens::new(Duration::from_secs(300), Arc::new(FakeClock::default()));
    let a = t.assign("alice", 7).unwrap();
    let b = t.assign("alice", 7).unwrap();
    for (tok, index) in [(&a, "1"), (&b, "2")] {
        let (letters, n) = tok.expose().split_once('.').unwrap();
        assert_eq!(letters.len(), 16);
        assert!(letters.bytes().all(|c| c.is_ascii_alphabetic()));
        assert_eq!(n, index);
    }
    assert_ne!(a.expose()[..16], b.expose()[..16]);
    let info = t.info(a.expose()).unwrap();
    assert_eq!(&*info.user, "alice");
    assert_eq!(info.auth_revision, None);
    assert_eq!(t.info("abcdefghijklmnop.1"), None);
    assert_eq!(t.info(""), None);
}

#[test]
fn simple_tokens_expire_after_the_ttl_since_last_use() {
    let clock = Arc::new(FakeClock::default());
    let t = SimpleTokens::new(Duration::from_secs(300), clock.clone());
    let a = t.assign("alice", 1).unwrap();
    let b = t.assign("bob", 1).unwrap();
    clock.advance(Duration::from_secs(299));
    assert!(
        t.info(a.expose()).is_some(),
        "used at 299 s: lives to 599 s"
    );
    clock.advance(Duration::from_secs(1));
    assert!(t.info(b.expose()).is_none(), "unused for 300 s");
    clock.advance(Duration::from_secs(298));
    assert!(t.info(a.expose()).is_some());
    clock.advance(Duration::from_secs(300));
    assert!(t.info(a.expose()).is_none());
    assert!(t.is_empty(), "expired tokens are forgotten");
}

#[test]
fn simple_tokens_of_a_user_or_all_can_be_dropped() {
    let t = SimpleTokens::new(Duration::from_secs(300), Arc::new(FakeClock::default()));
    let a = t.assign("alice", 1).unwrap();
    let b = t.assign("bob", 1).unwrap();
    t.invalidate_user("alice");
    assert!(t.info(a.expose()).is_none());
    assert!(t.info(b.expose()).is_some());
    t.disable();
    assert!(t.info(b.expose()).is_none());
}

#[test]
fn simple_tokens_sweep_expired_ones() {
    let clock = Arc::new(FakeClock::default());
    let t = SimpleTokens::new(Duration::from_secs(1), clock.clone());
    for _ in 0..MIN_SWEEP {
        t.assign("u", 1).unwrap();
    }
    clock.advance(Duration::from_secs(2));
    let live = t.assign("u", 1).unwrap();
    assert_eq!(t.len(), 1, "the expired ones were swept");
    assert!(t.info(live.expose()).is_some());
}

#[test]
fn simple_ttl_of_zero_is_refused() {
    assert!(matches!(
        new_provider(&TokenSpec::Simple, Duration::ZERO),
        Err(TokenConfigError::ZeroTtl)
    ));
    assert!(new_provider(&TokenSpec::Simple, Duration::from_secs(1)).is_ok());
}

/// Every sign method Coffer supports issues tokens that it reads back, with private key only,
/// and with both keys.
#[test]
fn jwt_round_trips_for_every_supported_method() {
    let k = keys();
    let cases: Vec<(&str, &Path, Option<&Path>)> = vec![
        ("HS256", &k.hmac, None),
        ("HS384", &k.hmac, None),
        ("HS512", &k.hmac, None),
        ("RS256", &k.rsa.0, Some(&k.rsa.1)),
        ("RS384", &k.rsa_pkcs1, Some(&k.rsa.1)),
        ("RS512", &k.rsa.0, Some(&k.rsa.1)),
        ("PS256", &k.rsa.0, Some(&k.rsa.1)),
        ("PS384", &k.rsa_pkcs1, Some(&k.rsa.1)),
        ("PS512", &k.rsa.0, Some(&k.rsa.1)),
        ("ES256", &k.p256.0, Some(&k.p256.1)),
        ("ES384", &k.p384.0, Some(&k.p384.1)),
        ("EdDSA", &k.ed.0, Some(&k.ed.1)),
    ];
    for (method, private, public) in cases {
        for public in [None, public] {
            let p = JwtTokens::load(&spec(method, Some(private), public))
                .unwrap_or_else(|e| panic!("{method}: {e}"));
            let tok = p.assign("alice", 42).unwrap();
            let info = p.info(tok.expose()).unwrap_or_else(|| panic!("{method}"));
            assert_eq!(&*info.user, "alice");
            assert_eq!(info.auth_revision, Some(42));
            let header = jsonwebtoken::decode_header(tok.expose()).unwrap();
            assert_eq!(format!("{:?}", header.alg), method);
        }
    }
}

#[test]
fn jwt_claims_are_etcds() {
    let k = keys();
    let p = JwtTokens::load(&spec("HS256", Some(&k.hmac), None)).unwrap();
    let tok = p.assign("alice", 5).unwrap();
    let mut v = Validation::new(Algorithm::HS256);
    v.insecure_disable_signature_validation();
    let claims: serde_json::Value =
        jsonwebtoken::decode(tok.expose(), &DecodingKey::from_secret(b""), &v)
            .unwrap()
            .claims;
    assert_eq!(claims["username"], "alice");
    assert_eq!(claims["revision"], 5);
    let exp = claims["exp"].as_u64().unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!((now + 299..=now + 301).contains(&exp), "{exp} vs {now}");
}

#[test]
fn jwt_refuses_bad_signatures_wrong_algorithms_and_expired_tokens() {
    let k = keys();
    let rs = JwtTokens::load(&spec("RS256", Some(&k.rsa.0), None)).unwrap();
    let good = rs.assign("alice", 1).unwrap();
    assert!(rs.info(good.expose()).is_some());

    // Another key's signature.
    let other_dir = tempfile::tempdir().unwrap();
    openssl(
        other_dir.path(),
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "x.key",
        ],
    );
    let other =
        JwtTokens::load(&spec("RS256", Some(&other_dir.path().join("x.key")), None)).unwrap();
    assert!(rs
        .info(other.assign("alice", 1).unwrap().expose())
        .is_none());

    // The same key under another RSA algorithm, HMAC keyed with the public key (the classic
    // confusion), and "none".
    let ps = JwtTokens::load(&spec("PS256", Some(&k.rsa.0), None)).unwrap();
    assert!(rs.info(ps.assign("alice", 1).unwrap().expose()).is_none());
    let confused = JwtTokens::load(&spec("HS256", Some(&k.rsa.1), None)).unwrap();
    assert!(rs
        .info(confused.assign("alice", 1).unwrap().expose())
        .is_none());
    let parts: Vec<&str> = good.expose().split('.').collect();
    let none_header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"; // {"alg":"none","typ":"JWT"}
    assert!(rs.info(&format!("{none_header}.{}.", parts[1])).is_none());

    // A changed payload under the old signature.
    let forged = Claims {
        username: "root".into(),
        revision: 1,
        exp: u64::MAX / 2,
    };
    let forged_payload = rs.sign(&forged).unwrap();
    let forged_payload = forged_payload
        .expose()
        .split('.')
        .nth(1)
        .unwrap()
        .to_owned();
    assert!(rs
        .info(&format!("{}.{}.{}", parts[0], forged_payload, parts[2]))
        .is_none());

    // Expired one second ago, and garbage.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expired = rs
        .sign(&Claims {
            username: "alice".into(),
            revision: 1,
            exp: now - 1,
        })
        .unwrap();
    assert!(rs.info(expired.expose()).is_none());
    for junk in ["", "a.b.c", "not a token", "...."] {
        assert!(rs.info(junk).is_none(), "{junk:?}");
    }
}

#[test]
fn jwt_with_a_public_key_only_verifies_but_does_not_issue() {
    let k = keys();
    let full = JwtTokens::load(&spec("ES256", Some(&k.p256.0), None)).unwrap();
    let verify_only = JwtTokens::load(&spec("ES256", None, Some(&k.p256.1))).unwrap();
    assert!(matches!(
        verify_only.assign("alice", 1),
        Err(AuthError::VerifyOnly)
    ));
    let tok = full.assign("alice", 3).unwrap();
    assert_eq!(
        verify_only.info(tok.expose()).unwrap().auth_revision,
        Some(3)
    );
}

#[test]
fn jwt_configuration_errors() {
    let k = keys();
    let err = |s: JwtSpec| JwtTokens::load(&s).unwrap_err();
    assert!(matches!(
        err(spec("RS256", Some(&k.rsa.0), Some(&k.rsa_other_pub))),
        TokenConfigError::KeyMismatch
    ));
    assert!(matches!(
        err(spec("ES512", Some(&k.p256.0), None)),
        TokenConfigError::UnsupportedMethod(_)
    ));
    for method in ["", "none", "HS1024", "rs256"] {
        assert!(matches!(
            err(spec(method, Some(&k.hmac), None)),
            TokenConfigError::InvalidMethod(_)
        ));
    }
    assert!(matches!(
        err(spec("HS256", None, Some(&k.hmac))),
        TokenConfigError::MissingKey(_)
    ));
    assert!(matches!(
        err(spec("RS256", None, None)),
        TokenConfigError::MissingKey(_)
    ));
    assert!(matches!(
        err(spec("ES256", Some(&k.p256_sec1), None)),
        TokenConfigError::BadKey { .. }
    ));
    assert!(matches!(
        err(spec("ES256", Some(&k.rsa.0), None)),
        TokenConfigError::BadKey { .. }
    ));
    assert!(matches!(
        err(spec("ES384", Some(&k.p256.0), None)),
        TokenConfigError::BadKey { .. }
    ));
    let missing = Path::new("/nonexistent/coffer.key");
    let e = err(spec("RS256", Some(missing), None));
    assert!(matches!(e, TokenConfigError::ReadKey { .. }));
    assert!(e.to_string().contains("/nonexistent/coffer.key"), "{e}");
    // A key's bytes never reach the message.
    let e = err(spec("RS256", Some(&k.hmac), None)).to_string();
    assert!(!e.contains("shared secret"), "{e}");
}

#[test]
fn providers_do_not_print_keys() {
    let k = keys();
    let p = JwtTokens::load(&spec("HS256", Some(&k.hmac), None)).unwrap();
    let text = format!("{p:?}");
    assert!(!text.contains("shared"), "{text}");
    assert!(text.contains("HS256"));
}
