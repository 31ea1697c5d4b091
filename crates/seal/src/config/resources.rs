//! Resources: parsing resource strings into [`GroupResource`], choosing the provider list for a
//! resource (exact → `*.<group>` → `*.*`, with repeated exact entries concatenated), the
//! masking check kube-apiserver runs when it builds transformers, and the mapping from an etcd
//! key back to the resource whose rule applies (reference §1.3). See `docs/resource-mapping.md`.

use std::fmt;

use serde::Serialize;

use super::error::BuildError;
use super::model::{EncryptionConfiguration, ProviderConfiguration};

/// kube-apiserver's default `--etcd-prefix`.
pub const DEFAULT_ETCD_PREFIX: &str = "/registry";

/// A `{group, resource}` pair as `schema.ParseGroupResource` makes it. The core group is `""`;
/// wildcards are `*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct GroupResource {
    /// API group (`""` for core, `apps`, `*`).
    pub group: String,
    /// Plural resource name (`secrets`, `*`).
    pub resource: String,
}

impl GroupResource {
    /// A pair from its parts.
    pub fn new(group: impl Into<String>, resource: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            resource: resource.into(),
        }
    }

    /// Splits a config resource string at its first `.`: `secrets` and `secrets.` are core
    /// `secrets`, `deployments.apps` is `{apps, deployments}`, `*.` is `{"", *}`.
    pub fn parse(s: &str) -> Self {
        match s.split_once('.') {
            Some((resource, group)) => Self::new(group, resource),
            None => Self::new("", s),
        }
    }

    /// `*.*`.
    pub fn is_any_group_any_resource(&self) -> bool {
        self.group == "*" && self.resource == "*"
    }

    /// Whether this is a wildcard rule (`*.`, `*.<group>`, `*.*`).
    pub fn is_wildcard(&self) -> bool {
        self.resource == "*"
    }
}

/// Upstream's rendering in messages: `secrets`, `deployments.apps`, `*.`, `*.apps`, `*.*`.
impl fmt::Display for GroupResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() && self.resource == "*" {
            f.write_str("*.")
        } else if self.group.is_empty() {
            f.write_str(&self.resource)
        } else {
            write!(f, "{}.{}", self.resource, self.group)
        }
    }
}

/// The post-validation masking check: an item is rejected when an earlier item (in file order,
/// across entries) registered `{group,*}` for its group or `{*,*}`. Every masked item is
/// reported (upstream stops at the first).
pub(crate) fn masking_errors(config: &EncryptionConfiguration) -> Vec<BuildError> {
    let mut registered: Vec<GroupResource> = Vec::new();
    let mut errors = Vec::new();
    for (i, entry) in config.resources.iter().enumerate() {
        for (n, item) in entry.resources.iter().enumerate() {
            let gr = GroupResource::parse(item);
            let group_rule = GroupResource::new(gr.group.clone(), "*");
            let any = GroupResource::new("*", "*");
            let masking = if registered.contains(&group_rule) {
                Some(group_rule)
            } else if registered.contains(&any) {
                Some(any)
            } else {
                None
            };
            match masking {
                Some(rule) => errors.push(BuildError {
                    path: format!("resources[{i}].resources[{n}]"),
                    resource: gr.to_string(),
                    rule: rule.to_string(),
                }),
                None => registered.push(gr),
            }
        }
    }
    errors
}

/// Which rule supplies a resource's provider list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleMatch {
    /// The entries (`resources[i]`) whose providers are concatenated, in order.
    pub entries: Vec<usize>,
    /// The matching item: the resource itself, `*.<group>`/`*.` or `*.*`.
    pub rule: GroupResource,
}

impl EncryptionConfiguration {
    /// The rule that applies to `gr`: exact `{group, resource}` (every entry listing it,
    /// concatenated in file order), else `{group, *}`, else `{*, *}`; `None` when no rule
    /// covers it (kube-apiserver then stores plaintext; Coffer's keyspace uses its default key).
    pub fn rule_for(&self, gr: &GroupResource) -> Option<RuleMatch> {
        let candidates = [
            gr.clone(),
            GroupResource::new(gr.group.clone(), "*"),
            GroupResource::new("*", "*"),
        ];
        candidates.into_iter().find_map(|want| {
            let entries: Vec<usize> = self
                .resources
                .iter()
                .enumerate()
                .filter(|(_, e)| e.resources.iter().any(|r| GroupResource::parse(r) == want))
                .map(|(i, _)| i)
                .collect();
            (!entries.is_empty()).then_some(RuleMatch {
                entries,
                rule: want,
            })
        })
    }

    /// The provider list for `gr` (first writes, all read, in order); `None` when no rule covers
    /// it.
    pub fn providers_for(&self, gr: &GroupResource) -> Option<Vec<ProviderConfiguration>> {
        let m = self.rule_for(gr)?;
        Some(
            m.entries
                .iter()
                .flat_map(|&i| self.resources[i].providers.iter().cloned())
                .collect(),
        )
    }

    /// The provider list for an etcd key: [`resource_for_key`] then [`Self::providers_for`].
    /// `None` for keys outside the prefix and keys of resources no rule covers.
    pub fn providers_for_key(
        &self,
        etcd_prefix: &str,
        key: &[u8],
    ) -> Option<Vec<ProviderConfiguration>> {
        self.providers_for(&resource_for_key(etcd_prefix, key)?)
    }
}

/// Built-in resources: key segment → (group, plural). Segments not listed here and without a
/// `.` are taken as core plurals.
const BUILTIN: &[(&str, &str, &str)] = &[
    // core
    ("configmaps", "", "configmaps"),
    ("events", "", "events"),
    ("limitranges", "", "limitranges"),
    ("namespaces", "", "namespaces"),
    ("persistentvolumeclaims", "", "persistentvolumeclaims"),
    ("persistentvolumes", "", "persistentvolumes"),
    ("pods", "", "pods"),
    ("podtemplates", "", "podtemplates"),
    ("resourcequotas", "", "resourcequotas"),
    ("secrets", "", "secrets"),
    ("serviceaccounts", "", "serviceaccounts"),
    // special prefixes (SpecialDefaultResourcePrefixes and non-REST keys)
    ("minions", "", "nodes"),
    ("controllers", "", "replicationcontrollers"),
    ("masterleases", "", "apiserveripinfo"),
    ("ingress", "networking.k8s.io", "ingresses"),
    ("podsecuritypolicy", "policy", "podsecuritypolicies"),
    // admissionregistration.k8s.io
    (
        "mutatingwebhookconfigurations",
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
    ),
    (
        "validatingwebhookconfigurations",
        "admissionregistration.k8s.io",
        "validatingwebhookconfigurations",
    ),
    (
        "validatingadmissionpolicies",
        "admissionregistration.k8s.io",
        "validatingadmissionpolicies",
    ),
    (
        "validatingadmissionpolicybindings",
        "admissionregistration.k8s.io",
        "validatingadmissionpolicybindings",
    ),
    (
        "mutatingadmissionpolicies",
        "admissionregistration.k8s.io",
        "mutatingadmissionpolicies",
    ),
    (
        "mutatingadmissionpolicybindings",
        "admissionregistration.k8s.io",
        "mutatingadmissionpolicybindings",
    ),
    // apps
    ("controllerrevisions", "apps", "controllerrevisions"),
    ("daemonsets", "apps", "daemonsets"),
    ("deployments", "apps", "deployments"),
    ("replicasets", "apps", "replicasets"),
    ("statefulsets", "apps", "statefulsets"),
    // autoscaling, batch
    (
        "horizontalpodautoscalers",
        "autoscaling",
        "horizontalpodautoscalers",
    ),
    ("cronjobs", "batch", "cronjobs"),
    ("jobs", "batch", "jobs"),
    // certificates.k8s.io
    (
        "certificatesigningrequests",
        "certificates.k8s.io",
        "certificatesigningrequests",
    ),
    (
        "clustertrustbundles",
        "certificates.k8s.io",
        "clustertrustbundles",
    ),
    (
        "podcertificaterequests",
        "certificates.k8s.io",
        "podcertificaterequests",
    ),
    // coordination.k8s.io
    ("leases", "coordination.k8s.io", "leases"),
    ("leasecandidates", "coordination.k8s.io", "leasecandidates"),
    // discovery.k8s.io
    ("endpointslices", "discovery.k8s.io", "endpointslices"),
    // flowcontrol.apiserver.k8s.io
    ("flowschemas", "flowcontrol.apiserver.k8s.io", "flowschemas"),
    (
        "prioritylevelconfigurations",
        "flowcontrol.apiserver.k8s.io",
        "prioritylevelconfigurations",
    ),
    // internal.apiserver.k8s.io
    (
        "storageversions",
        "internal.apiserver.k8s.io",
        "storageversions",
    ),
    // networking.k8s.io
    ("ingressclasses", "networking.k8s.io", "ingressclasses"),
    ("networkpolicies", "networking.k8s.io", "networkpolicies"),
    ("ipaddresses", "networking.k8s.io", "ipaddresses"),
    ("servicecidrs", "networking.k8s.io", "servicecidrs"),
    // node.k8s.io, policy
    ("runtimeclasses", "node.k8s.io", "runtimeclasses"),
    ("poddisruptionbudgets", "policy", "poddisruptionbudgets"),
    // rbac.authorization.k8s.io
    (
        "clusterrolebindings",
        "rbac.authorization.k8s.io",
        "clusterrolebindings",
    ),
    ("clusterroles", "rbac.authorization.k8s.io", "clusterroles"),
    ("rolebindings", "rbac.authorization.k8s.io", "rolebindings"),
    ("roles", "rbac.authorization.k8s.io", "roles"),
    // resource.k8s.io
    ("deviceclasses", "resource.k8s.io", "deviceclasses"),
    ("resourceclaims", "resource.k8s.io", "resourceclaims"),
    (
        "resourceclaimtemplates",
        "resource.k8s.io",
        "resourceclaimtemplates",
    ),
    ("resourceslices", "resource.k8s.io", "resourceslices"),
    ("devicetaintrules", "resource.k8s.io", "devicetaintrules"),
    // scheduling.k8s.io
    ("priorityclasses", "scheduling.k8s.io", "priorityclasses"),
    // storage.k8s.io
    ("csidrivers", "storage.k8s.io", "csidrivers"),
    ("csinodes", "storage.k8s.io", "csinodes"),
    (
        "csistoragecapacities",
        "storage.k8s.io",
        "csistoragecapacities",
    ),
    ("storageclasses", "storage.k8s.io", "storageclasses"),
    ("volumeattachments", "storage.k8s.io", "volumeattachments"),
    (
        "volumeattributesclasses",
        "storage.k8s.io",
        "volumeattributesclasses",
    ),
    // storagemigration.k8s.io
    (
        "storageversionmigrations",
        "storagemigration.k8s.io",
        "storageversionmigrations",
    ),
];

/// Whether `gr` is a resource kube-apiserver stores itself (a built-in, or the special
/// `services`/`endpoints`). Used to warn about names like `secret` that match nothing.
pub fn is_known_builtin(gr: &GroupResource) -> bool {
    let special = gr.group.is_empty()
        && matches!(
            gr.resource.as_str(),
            "services" | "endpoints" | "nodes" | "replicationcontrollers"
        );
    special
        || BUILTIN
            .iter()
            .any(|(_, g, r)| *g == gr.group && *r == gr.resource)
        || (gr.group == "apiextensions.k8s.io" && gr.resource == "customresourcedefinitions")
        || (gr.group == "apiregistration.k8s.io" && gr.resource == "apiservices")
}

/// Normalises an etcd prefix as kube-apiserver does (`path.Join("/", prefix)` plus a trailing
/// `/`): `/registry`, `registry`, `/registry/` all give `/registry/`.
pub fn normalize_prefix(etcd_prefix: &str) -> String {
    let parts: Vec<&str> = etcd_prefix
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    let mut stack: Vec<&str> = Vec::new();
    for p in parts {
        if p == ".." {
            stack.pop();
        } else {
            stack.push(p);
        }
    }
    if stack.is_empty() {
        "/".to_owned()
    } else {
        format!("/{}/", stack.join("/"))
    }
}

/// Maps an etcd key back to the resource whose encryption rule kube-apiserver applies to it:
/// strip the prefix; special prefixes (`services/specs` → services, `services/endpoints` →
/// endpoints, `ranges/*` → services, `minions` → nodes, `controllers` →
/// replicationcontrollers, `ingress` → ingresses.networking.k8s.io, `masterleases` →
/// apiserveripinfo); a first segment containing `.` is a group followed by the plural (CRDs,
/// APIServices, custom resources); any other first segment is a built-in plural, its group from
/// the built-in table, or the core group when not listed.
///
/// `None` for keys outside the prefix (`compact_rev_key`, ...), for the prefix itself, and for
/// shapes kube-apiserver never writes (empty segments, a group without a plural, non-UTF-8
/// resource segments). Names after the resource segments are not inspected.
pub fn resource_for_key(etcd_prefix: &str, key: &[u8]) -> Option<GroupResource> {
    let prefix = normalize_prefix(etcd_prefix);
    let rest = key.strip_prefix(prefix.as_bytes())?;
    let mut segments = rest.split(|&b| b == b'/');
    let first = std::str::from_utf8(segments.next()?).ok()?;
    if first.is_empty() {
        return None;
    }
    let second = segments.next().and_then(|s| std::str::from_utf8(s).ok());
    match first {
        "services" => match second {
            Some("endpoints") => return Some(GroupResource::new("", "endpoints")),
            _ => return Some(GroupResource::new("", "services")),
        },
        "ranges" => return Some(GroupResource::new("", "services")),
        _ => {}
    }
    if first.contains('.') {
        let plural = second.filter(|s| !s.is_empty())?;
        return Some(GroupResource::new(first, plural));
    }
    if let Some((_, group, plural)) = BUILTIN.iter().find(|(seg, _, _)| *seg == first) {
        return Some(GroupResource::new(*group, *plural));
    }
    Some(GroupResource::new("", first))
}

/// The etcd key prefixes kube-apiserver writes a resource under (the inverse of
/// [`resource_for_key`]), e.g. `services` → `/registry/services/specs/` and
/// `/registry/ranges/`. Empty for wildcards.
pub fn key_prefixes_for(etcd_prefix: &str, gr: &GroupResource) -> Vec<String> {
    let prefix = normalize_prefix(etcd_prefix);
    if gr.is_wildcard() || gr.group == "*" {
        return Vec::new();
    }
    let segs: Vec<String> = match (gr.group.as_str(), gr.resource.as_str()) {
        ("", "services") => vec!["services/specs/".into(), "ranges/".into()],
        ("", "endpoints") => vec!["services/endpoints/".into()],
        _ => match BUILTIN
            .iter()
            .find(|(_, g, r)| *g == gr.group && *r == gr.resource)
        {
            Some((seg, _, _)) => vec![format!("{seg}/")],
            None if gr.group.is_empty() => vec![format!("{}/", gr.resource)],
            None => vec![format!("{}/{}/", gr.group, gr.resource)],
        },
    };
    segs.into_iter().map(|s| format!("{prefix}{s}")).collect()
}
