//! EncryptionConfiguration: fixtures per validation rule, Go-base64 decoding, parser robustness,
//! secrets never shown, resource lookup and the etcd key → resource mapping.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use base64::Engine as _;
use coffer_seal::config::{
    self, check, decode_go_base64, key_prefixes_for, parse, resource_for_key, ConfigError,
    GroupResource, KmsApiVersion, ProviderConfiguration, DEFAULT_ETCD_PREFIX,
};
use proptest::prelude::*;

fn fixtures(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/configs")
        .join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "json")
            )
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    files
}

fn expectations(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let from_comments: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# expect: "))
        .map(str::to_owned)
        .collect();
    if !from_comments.is_empty() {
        return from_comments;
    }
    let side = file.with_extension("expect");
    std::fs::read_to_string(side)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_invalid_fixture_fails_with_exactly_its_errors() {
    let mut checked = 0;
    for file in fixtures("invalid") {
        let want = expectations(&file);
        assert!(!want.is_empty(), "{}: no expectations", file.display());
        let err = config::load(&file).expect_err(&format!("{} must be rejected", file.display()));
        match &err {
            ConfigError::Invalid { .. }
            | ConfigError::Decode { .. }
            | ConfigError::Build { .. } => {
                assert_eq!(err.lines(), want, "{}", file.display());
            }
            other => {
                assert_eq!(want.len(), 1, "{}", file.display());
                let shown = other.to_string();
                assert!(
                    shown.contains(&want[0]),
                    "{}: {shown:?} does not contain {:?}",
                    file.display(),
                    want[0]
                );
            }
        }
        // The whole error renders too (aggregate form), and names the problem.
        assert!(err.to_string().contains(&want[0]) || err.lines().len() > 1);
        checked += 1;
    }
    assert!(checked >= 45, "only {checked} invalid fixtures");
}

#[test]
fn every_valid_fixture_loads() {
    for file in fixtures("valid") {
        let cfg = config::load(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(!cfg.resources.is_empty());
        // The report never fails on a valid config.
        let report = check(&cfg, DEFAULT_ETCD_PREFIX);
        assert_eq!(report.rules.len(), cfg.resources.len());
    }
}

fn load_valid(name: &str) -> config::EncryptionConfiguration {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/configs/valid")
        .join(name);
    config::load(&p).unwrap()
}

#[test]
fn every_provider_model_and_defaults() {
    let cfg = load_valid("every-provider.yaml");
    let p = &cfg.resources[0].providers;
    assert_eq!(p.len(), 6);
    let ProviderConfiguration::Kms(k2) = &p[0] else {
        panic!()
    };
    assert_eq!(k2.api_version, KmsApiVersion::V2);
    assert_eq!(k2.timeout, std::time::Duration::from_secs(90));
    assert_eq!(k2.cache_size, None);
    let ProviderConfiguration::Kms(k1) = &p[1] else {
        panic!()
    };
    assert_eq!(
        k1.api_version,
        KmsApiVersion::V1,
        "apiVersion defaults to v1"
    );
    assert_eq!(
        k1.timeout,
        std::time::Duration::from_secs(3),
        "timeout defaults to 3s"
    );
    assert_eq!(k1.cache_size, Some(-1));
    assert_eq!(k1.name, "kms1:with-colon");
    let ProviderConfiguration::AesGcm(g) = &p[2] else {
        panic!()
    };
    assert_eq!(
        g.keys[0].secret.expose_secret(),
        (1..=16).collect::<Vec<u8>>()
    );
    let ProviderConfiguration::AesCbc(c) = &p[3] else {
        panic!()
    };
    assert_eq!(c.keys.len(), 2);
    assert_eq!(c.keys[0].secret.len(), 24);
    assert!(matches!(p[4], ProviderConfiguration::Secretbox(_)));
    assert!(matches!(p[5], ProviderConfiguration::Identity));

    let v1_default = parse(
        b"apiVersion: v1\nkind: EncryptionConfig\nresources:\n- resources: [secrets]\n  providers:\n  - kms: {name: a, endpoint: 'unix:///a'}\n",
        "inline",
    )
    .unwrap();
    let ProviderConfiguration::Kms(k) = &v1_default.resources[0].providers[0] else {
        panic!()
    };
    assert_eq!(
        k.cache_size,
        Some(1000),
        "cachesize defaults to 1000 for v1"
    );
}

#[test]
fn json_and_go_base64_forms() {
    let cfg = load_valid("json.json");
    assert!(matches!(
        cfg.resources[0].providers[0],
        ProviderConfiguration::Secretbox(_)
    ));
    for name in ["secret-with-newlines.yaml", "trailing-bits.yaml"] {
        let cfg = load_valid(name);
        let ProviderConfiguration::AesGcm(g) = &cfg.resources[0].providers[0] else {
            panic!()
        };
        assert_eq!(
            g.keys[0].secret.expose_secret(),
            (1..=16).collect::<Vec<u8>>(),
            "{name}"
        );
    }
}

#[test]
fn empty_and_unreadable_files() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.yaml");
    std::fs::write(&empty, b"").unwrap();
    let e = config::load(&empty).unwrap_err();
    assert!(matches!(e, ConfigError::Empty { .. }));
    assert_eq!(
        e.to_string(),
        format!(
            "error while loading file: encryption provider configuration file {:?} is empty",
            empty.display().to_string()
        )
    );
    let missing = dir.path().join("missing.yaml");
    let e = config::load(&missing).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }));
    let shown = e.to_string();
    assert!(shown.starts_with(
        "error while loading file: error reading encryption provider configuration file"
    ));
    assert!(shown.contains("missing.yaml"), "{shown}");
}

// ---------------------------------------------------------------------------------------------
// Go base64.

fn reference_go_base64(s: &str) -> Option<Vec<u8>> {
    // Go's StdEncoding: skip \r\n, require canonical padding, allow non-zero trailing bits.
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireCanonical),
    );
    let clean: String = s.chars().filter(|&c| c != '\r' && c != '\n').collect();
    engine.decode(clean).ok()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn go_base64_matches_reference(s in "[A-Za-z0-9+/=\r\n \\-_]{0,40}") {
        let ours = decode_go_base64(&s).ok().map(|k| k.expose_secret().to_vec());
        prop_assert_eq!(ours, reference_go_base64(&s));
    }

    #[test]
    fn go_base64_near_valid_matches_reference(
        bytes in proptest::collection::vec(any::<u8>(), 0..40),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), prop::sample::select(vec!['\n', '\r', '=', 'A', '/', '_'])), 0..3),
        drop_pad in any::<bool>(),
    ) {
        let mut s: Vec<char> = base64::engine::general_purpose::STANDARD.encode(&bytes).chars().collect();
        if drop_pad { while s.last() == Some(&'=') { s.pop(); } }
        for (at, c) in edits {
            let i = at.index(s.len() + 1);
            s.insert(i, c);
        }
        let s: String = s.into_iter().collect();
        let ours = decode_go_base64(&s).ok().map(|k| k.expose_secret().to_vec());
        prop_assert_eq!(ours, reference_go_base64(&s));
    }

    #[test]
    fn go_base64_roundtrip_with_line_breaks(bytes in proptest::collection::vec(any::<u8>(), 0..64), breaks in proptest::collection::vec(any::<prop::sample::Index>(), 0..5)) {
        let mut s = base64::engine::general_purpose::STANDARD.encode(&bytes);
        for b in breaks {
            let i = b.index(s.len() + 1);
            s.insert_str(i, "\r\n");
        }
        let decoded = decode_go_base64(&s).unwrap();
        prop_assert_eq!(decoded.expose_secret(), &bytes[..]);
    }

    #[test]
    fn parser_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse(&bytes, "fuzz");
    }

    #[test]
    fn parser_never_panics_on_yamlish(s in "[a-zA-Z0-9:{}\\[\\],\\- \n\"'#*.=/&!|>~@%]{0,300}") {
        let _ = parse(s.as_bytes(), "fuzz");
    }

    #[test]
    fn parser_never_panics_on_mutated_fixture(cut in any::<prop::sample::Index>(), len in 0usize..20, insert in "[a-z:\\[\\]{}\n -]{0,10}") {
        let base = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/configs/valid/every-provider.yaml")).unwrap();
        let at = cut.index(base.len());
        let end = (at + len).min(base.len());
        let mut m = base[..at].to_vec();
        m.extend_from_slice(insert.as_bytes());
        m.extend_from_slice(&base[end..]);
        if let Ok(cfg) = parse(&m, "mutated") {
            let _ = check(&cfg, DEFAULT_ETCD_PREFIX);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Secrets never shown.

const RAW_KEY_32: &[u8; 32] = b"TOP-SECRET-KEY-MATERIAL-0123456!";
const RAW_KEY_16: &[u8; 16] = b"TOPSECRET16BYTES";

fn forms_of(key: &[u8]) -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(key);
    vec![
        String::from_utf8_lossy(key).into_owned(),
        b64.trim_end_matches('=').to_owned(),
        hex::encode(key),
        format!("{:?}", &key[..4]).trim_end_matches(']').to_owned(),
        String::from_utf8_lossy(&key[..12]).into_owned(),
    ]
}

fn assert_no_key(text: &str, what: &str) {
    for key in [&RAW_KEY_32[..], &RAW_KEY_16[..]] {
        for form in forms_of(key) {
            assert!(
                !text.contains(&form),
                "{what} shows key material {form:?}: {text}"
            );
        }
    }
}

#[test]
fn no_key_bytes_in_debug_display_errors_or_report() {
    let b32 = base64::engine::general_purpose::STANDARD.encode(RAW_KEY_32);
    let b16 = base64::engine::general_purpose::STANDARD.encode(RAW_KEY_16);
    let yaml = format!(
        "apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets, configmaps]
    providers:
      - kms: {{apiVersion: v2, name: k2, endpoint: 'unix:///tmp/k.sock'}}
      - aesgcm: {{keys: [{{name: g, secret: {b32}}}, {{name: g, secret: {b16}}}]}}
      - aescbc: {{keys: [{{name: c, secret: {b16}}}]}}
      - secretbox: {{keys: [{{name: s, secret: {b32}}}]}}
      - identity: {{}}
"
    );
    let cfg = parse(yaml.as_bytes(), "leak-test").unwrap();
    assert_no_key(&format!("{cfg:?}"), "config Debug");
    assert_no_key(&format!("{cfg:#?}"), "config pretty Debug");
    let report = check(&cfg, DEFAULT_ETCD_PREFIX);
    assert_no_key(&format!("{report:?}"), "report Debug");
    assert_no_key(&serde_json::to_string(&report).unwrap(), "report JSON");
    let providers = cfg.providers_for(&GroupResource::parse("secrets")).unwrap();
    assert_no_key(&format!("{providers:?}"), "providers Debug");

    // Errors: wrong lengths, a mangled secret, an unknown field next to a secret, a wrong type.
    let bad = yaml
        .replace(
            &format!("secret: {b32}}}]}}\n      - identity"),
            &format!("secret: {b16}}}]}}\n      - identity"),
        )
        .replace("name: c,", "name: c, extra: 1,")
        .replace(
            &format!("name: g, secret: {b32}"),
            &format!("name: g, secret: \"{b32}!\""),
        );
    let err = parse(bad.as_bytes(), "leak-test").unwrap_err();
    for text in [err.to_string(), format!("{err:?}"), err.lines().join("\n")] {
        assert_no_key(&text, "error");
    }
    let bad2 = yaml.replace(
        &format!("name: c, secret: {b16}"),
        &format!("name: c, secret: {b32}x"),
    );
    let err = parse(bad2.as_bytes(), "leak-test").unwrap_err();
    assert!(err.to_string().contains("\"REDACTED\""), "{err}");
    assert_no_key(&format!("{err} {err:?}"), "error");
    let bad3 = yaml.replace(
        &format!("{{name: s, secret: {b32}}}"),
        &format!("{{name: s, secret: [{b32}]}}"),
    );
    let err = parse(bad3.as_bytes(), "leak-test").unwrap_err();
    assert_no_key(&format!("{err} {err:?}"), "decode error");
}

// ---------------------------------------------------------------------------------------------
// Lookup, masking, key mapping.

fn kinds(p: &[ProviderConfiguration]) -> Vec<String> {
    p.iter()
        .map(|p| match p {
            ProviderConfiguration::AesGcm(k) => format!("aesgcm:{}", k.keys[0].name),
            ProviderConfiguration::AesCbc(k) => format!("aescbc:{}", k.keys[0].name),
            ProviderConfiguration::Secretbox(k) => format!("secretbox:{}", k.keys[0].name),
            ProviderConfiguration::Identity => "identity".into(),
            ProviderConfiguration::Kms(k) => format!("kms:{}", k.name),
        })
        .collect()
}

#[test]
fn group_resource_parsing() {
    assert_eq!(
        GroupResource::parse("secrets"),
        GroupResource::new("", "secrets")
    );
    assert_eq!(
        GroupResource::parse("secrets."),
        GroupResource::new("", "secrets")
    );
    assert_eq!(
        GroupResource::parse("deployments.apps"),
        GroupResource::new("apps", "deployments")
    );
    assert_eq!(
        GroupResource::parse("foos.stable.example.com"),
        GroupResource::new("stable.example.com", "foos")
    );
    assert_eq!(GroupResource::parse("*."), GroupResource::new("", "*"));
    assert_eq!(GroupResource::parse("*.*"), GroupResource::new("*", "*"));
    for s in ["secrets", "deployments.apps", "*.", "*.apps", "*.*"] {
        assert_eq!(GroupResource::parse(s).to_string(), s);
    }
}

#[test]
fn lookup_exact_then_group_then_any_and_concatenation() {
    let cfg = load_valid("wildcards-allowed.yaml");
    let lookup = |s: &str| kinds(&cfg.providers_for(&GroupResource::parse(s)).unwrap());
    assert_eq!(lookup("events"), ["identity"]);
    assert_eq!(lookup("secrets"), ["aesgcm:key1"]);
    let rule = |s: &str| cfg.rule_for(&GroupResource::parse(s)).unwrap();
    assert_eq!(rule("secrets").entries, [1]);
    assert_eq!(rule("deployments.apps").rule.to_string(), "*.apps");
    assert_eq!(rule("configmaps").rule.to_string(), "*.");
    assert_eq!(rule("configmaps").entries, [2]);
    assert_eq!(rule("foos.example.com").rule.to_string(), "*.example.com");
    assert_eq!(rule("widgets.other.io").rule.to_string(), "*.*");
    assert_eq!(rule("widgets.other.io").entries, [3]);

    let rep = load_valid("repeated-exact.yaml");
    let secrets = rep.providers_for(&GroupResource::parse("secrets")).unwrap();
    assert_eq!(kinds(&secrets), ["aesgcm:a", "aesgcm:b", "identity"]);
    assert_eq!(
        rep.rule_for(&GroupResource::parse("secrets"))
            .unwrap()
            .entries,
        [0, 2]
    );
    assert!(rep.providers_for(&GroupResource::parse("pods")).is_none());
    let report = check(&rep, DEFAULT_ETCD_PREFIX);
    assert_eq!(report.merged.len(), 1);
    assert_eq!(report.merged[0].resource, "secrets");
    assert_eq!(report.merged[0].read.len(), 3);
    assert_eq!(report.merged[0].write.keys, ["a"]);
}

#[test]
fn masking_reports_every_masked_item() {
    // Allowed: specific before wildcard.
    assert!(parse(b"apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [events]\n  providers: [{identity: {}}]\n- resources: ['*.*']\n  providers: [{identity: {}}]\n", "t").is_ok());
    let e = parse(b"apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: ['*.*']\n  providers: [{identity: {}}]\n- resources: [events]\n  providers: [{identity: {}}]\n", "t").unwrap_err();
    assert_eq!(
        e.to_string(),
        "error while building transformers: resource \"events\" is masked by earlier rule \"*.*\""
    );
}

#[test]
fn etcd_key_to_resource_table() {
    let table: &[(&str, Option<(&str, &str)>)] = &[
        ("/registry/secrets/default/s1", Some(("", "secrets"))),
        (
            "/registry/configmaps/kube-system/extension-apiserver-authentication",
            Some(("", "configmaps")),
        ),
        (
            "/registry/pods/default/nginx-7c5ddbdf54-abcde",
            Some(("", "pods")),
        ),
        ("/registry/namespaces/default", Some(("", "namespaces"))),
        (
            "/registry/persistentvolumes/pv-1",
            Some(("", "persistentvolumes")),
        ),
        (
            "/registry/serviceaccounts/default/default",
            Some(("", "serviceaccounts")),
        ),
        (
            "/registry/services/specs/default/kubernetes",
            Some(("", "services")),
        ),
        (
            "/registry/services/endpoints/default/kubernetes",
            Some(("", "endpoints")),
        ),
        ("/registry/ranges/serviceips", Some(("", "services"))),
        ("/registry/ranges/servicenodeports", Some(("", "services"))),
        ("/registry/minions/node-1", Some(("", "nodes"))),
        (
            "/registry/controllers/default/rc1",
            Some(("", "replicationcontrollers")),
        ),
        (
            "/registry/masterleases/10.0.0.1",
            Some(("", "apiserveripinfo")),
        ),
        (
            "/registry/events/default/nginx.17a8b3c1",
            Some(("", "events")),
        ),
        (
            "/registry/ingress/default/web",
            Some(("networking.k8s.io", "ingresses")),
        ),
        (
            "/registry/deployments/default/web",
            Some(("apps", "deployments")),
        ),
        (
            "/registry/replicasets/default/web-1",
            Some(("apps", "replicasets")),
        ),
        (
            "/registry/daemonsets/kube-system/kube-proxy",
            Some(("apps", "daemonsets")),
        ),
        (
            "/registry/statefulsets/db/pg",
            Some(("apps", "statefulsets")),
        ),
        (
            "/registry/controllerrevisions/db/pg-1",
            Some(("apps", "controllerrevisions")),
        ),
        ("/registry/jobs/default/j", Some(("batch", "jobs"))),
        ("/registry/cronjobs/default/c", Some(("batch", "cronjobs"))),
        (
            "/registry/networkpolicies/default/deny",
            Some(("networking.k8s.io", "networkpolicies")),
        ),
        (
            "/registry/endpointslices/default/kubernetes",
            Some(("discovery.k8s.io", "endpointslices")),
        ),
        (
            "/registry/leases/kube-node-lease/node-1",
            Some(("coordination.k8s.io", "leases")),
        ),
        (
            "/registry/roles/default/r",
            Some(("rbac.authorization.k8s.io", "roles")),
        ),
        (
            "/registry/rolebindings/default/rb",
            Some(("rbac.authorization.k8s.io", "rolebindings")),
        ),
        (
            "/registry/clusterroles/admin",
            Some(("rbac.authorization.k8s.io", "clusterroles")),
        ),
        (
            "/registry/clusterrolebindings/cluster-admin",
            Some(("rbac.authorization.k8s.io", "clusterrolebindings")),
        ),
        (
            "/registry/horizontalpodautoscalers/default/h",
            Some(("autoscaling", "horizontalpodautoscalers")),
        ),
        (
            "/registry/poddisruptionbudgets/default/p",
            Some(("policy", "poddisruptionbudgets")),
        ),
        (
            "/registry/podsecuritypolicy/restricted",
            Some(("policy", "podsecuritypolicies")),
        ),
        (
            "/registry/storageclasses/standard",
            Some(("storage.k8s.io", "storageclasses")),
        ),
        (
            "/registry/priorityclasses/system-cluster-critical",
            Some(("scheduling.k8s.io", "priorityclasses")),
        ),
        (
            "/registry/flowschemas/exempt",
            Some(("flowcontrol.apiserver.k8s.io", "flowschemas")),
        ),
        (
            "/registry/apiextensions.k8s.io/customresourcedefinitions/foos.example.com",
            Some(("apiextensions.k8s.io", "customresourcedefinitions")),
        ),
        (
            "/registry/apiregistration.k8s.io/apiservices/v1.apps",
            Some(("apiregistration.k8s.io", "apiservices")),
        ),
        (
            "/registry/example.com/foos/default/f1",
            Some(("example.com", "foos")),
        ),
        (
            "/registry/gateway.networking.k8s.io/gateways/default/gw",
            Some(("gateway.networking.k8s.io", "gateways")),
        ),
        (
            "/registry/snapshot.storage.k8s.io/volumesnapshots/ns/s",
            Some(("snapshot.storage.k8s.io", "volumesnapshots")),
        ),
        ("/registry/widgets/default/w", Some(("", "widgets"))),
        ("/registry/secrets", Some(("", "secrets"))),
        ("/registry/example.com", None),
        ("/registry/example.com/", None),
        ("/registry/", None),
        ("/registry", None),
        ("/registry//secrets/x", None),
        ("compact_rev_key", None),
        ("/registryx/secrets/a/b", None),
        ("/other/secrets/a/b", None),
        ("", None),
    ];
    for (key, want) in table {
        let got = resource_for_key(DEFAULT_ETCD_PREFIX, key.as_bytes());
        let want = want.map(|(g, r)| GroupResource::new(g, r));
        assert_eq!(got, want, "{key}");
    }
    // Prefix forms.
    for prefix in ["/registry", "registry", "/registry/", "//registry//"] {
        assert_eq!(
            resource_for_key(prefix, b"/registry/secrets/a/b"),
            Some(GroupResource::new("", "secrets")),
            "{prefix}"
        );
    }
    assert_eq!(
        resource_for_key("/kubernetes.io", b"/kubernetes.io/minions/n"),
        Some(GroupResource::new("", "nodes"))
    );
    assert_eq!(
        resource_for_key("/", b"/secrets/a/b"),
        Some(GroupResource::new("", "secrets"))
    );
    assert_eq!(
        resource_for_key("/registry", b"/registry/secrets/\xff\xfe/x"),
        Some(GroupResource::new("", "secrets"))
    );
    assert_eq!(resource_for_key("/registry", b"/registry/\xff/x"), None);
}

#[test]
fn key_prefixes_invert_the_mapping() {
    for r in [
        "secrets",
        "configmaps",
        "services",
        "endpoints",
        "nodes",
        "replicationcontrollers",
        "ingresses.networking.k8s.io",
        "deployments.apps",
        "jobs.batch",
        "leases.coordination.k8s.io",
        "clusterroles.rbac.authorization.k8s.io",
        "customresourcedefinitions.apiextensions.k8s.io",
        "apiservices.apiregistration.k8s.io",
        "foos.example.com",
        "events",
        "podsecuritypolicies.policy",
    ] {
        let gr = GroupResource::parse(r);
        let prefixes = key_prefixes_for("/registry", &gr);
        assert!(!prefixes.is_empty(), "{r}");
        for p in prefixes {
            let key = format!("{p}ns/name");
            assert_eq!(
                resource_for_key("/registry", key.as_bytes()),
                Some(gr.clone()),
                "{r} via {key}"
            );
        }
    }
    assert!(key_prefixes_for("/registry", &GroupResource::parse("*.")).is_empty());
}

#[test]
fn providers_for_key_combines_both() {
    let cfg = load_valid("wildcards-allowed.yaml");
    let p = cfg
        .providers_for_key("/registry", b"/registry/events/default/e1")
        .unwrap();
    assert_eq!(kinds(&p), ["identity"]);
    let p = cfg
        .providers_for_key("/registry", b"/registry/deployments/default/d")
        .unwrap();
    assert_eq!(kinds(&p), ["aesgcm:key1"]);
    assert!(cfg
        .providers_for_key("/registry", b"compact_rev_key")
        .is_none());
    let minimal = load_valid("minimal.yaml");
    assert!(minimal
        .providers_for_key("/registry", b"/registry/configmaps/a/b")
        .is_none());
    assert!(minimal
        .providers_for_key("/registry", b"/registry/secrets/a/b")
        .is_some());
}

// ---------------------------------------------------------------------------------------------
// Report warnings.

fn codes(yaml: &str) -> Vec<(String, String)> {
    let cfg = parse(yaml.as_bytes(), "t").unwrap_or_else(|e| panic!("{e}"));
    check(&cfg, DEFAULT_ETCD_PREFIX)
        .warnings
        .into_iter()
        .map(|w| (w.code.to_owned(), w.path))
        .collect()
}

const K32: &str = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";

#[test]
fn warnings_cover_each_trip_wire() {
    let head =
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n";
    let w = codes(&format!("{head}- resources: [secret]\n  providers:\n  - identity: {{}}\n  - aesgcm: {{keys: [{{name: a, secret: {K32}}}, {{name: a, secret: {K32}}}]}}\n  - identity: {{}}\n  - aescbc: {{keys: [{{name: c, secret: {K32}}}]}}\n  - kms: {{name: v1, endpoint: 'unix:///a'}}\n"));
    let has = |c: &str, p: &str| w.iter().any(|(wc, wp)| wc == c && wp == p);
    assert!(
        has("unknown-resource", "resources[0].resources[0]"),
        "{w:?}"
    );
    assert!(has("identity-first", "resources[0].providers[0]"), "{w:?}");
    assert!(has("local-keys", "resources[0].providers[1]"), "{w:?}");
    assert!(has("aesgcm-nonce", "resources[0].providers[1]"), "{w:?}");
    assert!(
        has(
            "duplicate-key-name",
            "resources[0].providers[1].aesgcm.keys[1].name"
        ),
        "{w:?}"
    );
    assert!(
        has("identity-not-last", "resources[0].providers[2]"),
        "{w:?}"
    );
    assert!(has("aescbc", "resources[0].providers[3]"), "{w:?}");
    assert!(has("kms-v1", "resources[0].providers[4]"), "{w:?}");
    assert!(has("cis-1.2.28", "resources[0].providers[0]"), "{w:?}");
    assert!(has("secrets-not-encrypted", "resources"), "{w:?}");

    let w = codes(&format!("{head}- resources: [secrets]\n  providers:\n  - kms: {{apiVersion: v2, name: k, endpoint: 'unix:///a'}}\n  - identity: {{}}\n"));
    assert_eq!(
        w,
        [(
            "identity-read-fallback".to_owned(),
            "resources[0].providers[1]".to_owned()
        )]
    );

    let w = codes(&format!("{head}- resources: [secrets]\n  providers:\n  - kms: {{apiVersion: v2, name: k, endpoint: 'unix:///a'}}\n  - kms: {{apiVersion: v1, name: k, endpoint: 'unix:///b'}}\n"));
    assert!(w.iter().any(|(c, _)| c == "kms-v1-name-reuse"), "{w:?}");

    let w = codes(&format!("{head}- resources: [secrets]\n  providers:\n  - kms: {{apiVersion: v2, name: k, endpoint: 'unix:///a'}}\n"));
    assert!(w.is_empty(), "a kms v2-only config has no warning: {w:?}");
}

#[test]
fn hostile_documents_fail_fast() {
    let deep_json = format!("{}1{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
    let deep_yaml = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let mut laughs = String::from("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10u8 {
        let (n, p) = ((b'a' + i) as char, (b'a' + i - 1) as char);
        laughs += &format!("{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n");
    }
    for (doc, want) in [
        (deep_json, "nesting deeper than 64 levels"),
        (deep_yaml, "nesting deeper than 64 levels"),
        (laughs, "repetition limit exceeded"),
    ] {
        let start = std::time::Instant::now();
        let err = parse(doc.as_bytes(), "hostile").unwrap_err();
        assert!(err.to_string().contains(want), "{err}");
        assert!(
            start.elapsed() < std::time::Duration::from_secs(2),
            "{want}: {:?}",
            start.elapsed()
        );
    }
}

#[test]
fn reload_mode_makes_kms_v1_names_unique() {
    let f = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/configs/valid/kms-v2-then-v1-same-name.yaml");
    let bytes = std::fs::read(f).unwrap();
    assert!(config::parse_with_reload(&bytes, "t", false).is_ok());
    let err = config::parse_with_reload(&bytes, "t", true).unwrap_err();
    assert_eq!(
        err.lines(),
        ["resources[0].providers[1].kms.name: Invalid value: \"foo\": duplicate KMS provider name foo, names must be unique"]
    );
}
