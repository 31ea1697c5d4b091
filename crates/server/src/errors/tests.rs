//! Walks every error variant through the table and checks etcd's exact code and text.

use std::collections::BTreeSet;

use tonic::{Code, Status};

use super::ServerError;

/// The expected wire form of every variant, written out independently of `code()`/`Display`.
/// The match is exhaustive, so a new variant does not compile until it is listed here; the
/// numbers make sure `all()` below names each variant once.
fn expected(err: &ServerError) -> (usize, Code, &'static str) {
    match err {
        ServerError::EmptyKey => (0, Code::InvalidArgument, "etcdserver: key is not provided"),
        ServerError::KeyNotFound => (1, Code::InvalidArgument, "etcdserver: key not found"),
        ServerError::ValueProvided => (2, Code::InvalidArgument, "etcdserver: value is provided"),
        ServerError::LeaseProvided => (3, Code::InvalidArgument, "etcdserver: lease is provided"),
        ServerError::TooManyOps => (
            4,
            Code::InvalidArgument,
            "etcdserver: too many operations in txn request",
        ),
        ServerError::DuplicateKey => (
            5,
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request",
        ),
        ServerError::RequestTooLarge => {
            (6, Code::InvalidArgument, "etcdserver: request is too large")
        }
        ServerError::Compacted => (
            7,
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        ),
        ServerError::FutureRev => (
            8,
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision",
        ),
        ServerError::NoSpace => (
            9,
            Code::ResourceExhausted,
            "etcdserver: mvcc: database space exceeded",
        ),
        ServerError::LeaseNotFound => (10, Code::NotFound, "etcdserver: requested lease not found"),
        ServerError::MemberNotFound => (11, Code::NotFound, "etcdserver: member not found"),
        ServerError::MemberBadUrls => (
            12,
            Code::InvalidArgument,
            "etcdserver: given member URLs are invalid",
        ),
        ServerError::MemberNotEnoughStarted => (
            13,
            Code::Unknown,
            "etcdserver: re-configuration failed due to not enough started members",
        ),
        ServerError::MemberNotLearner => (
            14,
            Code::FailedPrecondition,
            "etcdserver: can only promote a learner member",
        ),
        ServerError::BadLeaderTransferee => (
            15,
            Code::FailedPrecondition,
            "etcdserver: bad leader transferee",
        ),
        ServerError::WrongDowngradeVersionFormat => (
            16,
            Code::InvalidArgument,
            "etcdserver: wrong downgrade target version format",
        ),
        ServerError::InvalidDowngradeTargetVersion => (
            17,
            Code::InvalidArgument,
            "etcdserver: invalid downgrade target version",
        ),
        ServerError::NoInflightDowngrade => (
            18,
            Code::FailedPrecondition,
            "etcdserver: no inflight downgrade job",
        ),
        ServerError::Stopped => (19, Code::Unavailable, "etcdserver: server stopped"),
        ServerError::Unsealable => (
            20,
            Code::Internal,
            "coffer: a stored value could not be opened (details in the server log)",
        ),
        ServerError::Unsealed => (
            21,
            Code::Internal,
            "coffer: a value could not be sealed (details in the server log)",
        ),
        ServerError::Engine => (
            22,
            Code::Internal,
            "coffer: the storage engine failed (details in the server log)",
        ),
        ServerError::InvalidSortOption => {
            (23, Code::InvalidArgument, "etcdserver: invalid sort option")
        }
        ServerError::LeaseExist => (
            24,
            Code::FailedPrecondition,
            "etcdserver: lease already exists",
        ),
        ServerError::LeaseTtlTooLarge => (25, Code::OutOfRange, "etcdserver: too large lease TTL"),
        ServerError::DiskFull => (
            26,
            Code::ResourceExhausted,
            "coffer: no space left on the data directory's disk; writes resume once space is freed",
        ),
        ServerError::TooManyRequests => (27, Code::Unknown, "etcdserver: too many requests"),
        ServerError::Timeout => (28, Code::Unavailable, "etcdserver: request timed out"),
        ServerError::WritesStopped => (
            29,
            Code::Unavailable,
            "coffer: writes are stopped after a failed commit; restart the server to recover \
             from its write-ahead log (details in the server log)",
        ),
        ServerError::Corrupt => (
            30,
            Code::DataLoss,
            "coffer: stored data is damaged (details in the server log)",
        ),
        ServerError::KmsUnavailable { .. } => (
            VARIANTS - 1,
            Code::Unavailable,
            "coffer: KMS provider \"vault\" is unavailable: writes under it are stopped until \
             its plugin answers a healthy Status (details in the server log)",
        ),
        ServerError::TooManyLeases => (
            31,
            Code::ResourceExhausted,
            "coffer: too many leases; revoke unused leases or raise --max-leases",
        ),
        ServerError::ResponseTooLarge { .. } => (
            32,
            Code::ResourceExhausted,
            "grpc: trying to send message larger than max (2147483648 vs. 2147483647)",
        ),
        ServerError::CannotAddMembers => (
            33,
            Code::Unimplemented,
            "coffer: a single-member server cannot add members; Coffer always runs as one \
             member: for a standby, copy it with `etcdctl snapshot save` and `coffer snapshot \
             restore`, or use etcd for a multi-member cluster",
        ),
        ServerError::RootUserNotExist => (
            34,
            Code::FailedPrecondition,
            "etcdserver: root user does not exist",
        ),
        ServerError::RootRoleNotExist => (
            35,
            Code::FailedPrecondition,
            "etcdserver: root user does not have root role",
        ),
        ServerError::UserAlreadyExist => (
            36,
            Code::FailedPrecondition,
            "etcdserver: user name already exists",
        ),
        ServerError::UserEmpty => (37, Code::InvalidArgument, "etcdserver: user name is empty"),
        ServerError::UserNotFound => (
            38,
            Code::FailedPrecondition,
            "etcdserver: user name not found",
        ),
        ServerError::RoleAlreadyExist => (
            39,
            Code::FailedPrecondition,
            "etcdserver: role name already exists",
        ),
        ServerError::RoleNotFound => (
            40,
            Code::FailedPrecondition,
            "etcdserver: role name not found",
        ),
        ServerError::RoleEmpty => (41, Code::InvalidArgument, "etcdserver: role name is empty"),
        ServerError::PermissionNotGiven => (
            42,
            Code::InvalidArgument,
            "etcdserver: permission not given",
        ),
        ServerError::PermissionDenied => {
            (43, Code::PermissionDenied, "etcdserver: permission denied")
        }
        ServerError::RoleNotGranted => (
            44,
            Code::FailedPrecondition,
            "etcdserver: role is not granted to the user",
        ),
        ServerError::PermissionNotGranted => (
            45,
            Code::FailedPrecondition,
            "etcdserver: permission is not granted to the role",
        ),
        ServerError::InvalidAuthMgmt => (
            46,
            Code::InvalidArgument,
            "etcdserver: invalid auth management",
        ),
        ServerError::AuthOldRevision => (
            47,
            Code::InvalidArgument,
            "etcdserver: revision of auth store is old",
        ),
    }
}
const VARIANTS: usize = 49;

fn all() -> Vec<ServerError> {
    vec![
        ServerError::EmptyKey,
        ServerError::KeyNotFound,
        ServerError::ValueProvided,
        ServerError::LeaseProvided,
        ServerError::TooManyOps,
        ServerError::DuplicateKey,
        ServerError::RequestTooLarge,
        ServerError::Compacted,
        ServerError::FutureRev,
        ServerError::NoSpace,
        ServerError::LeaseNotFound,
        ServerError::MemberNotFound,
        ServerError::MemberBadUrls,
        ServerError::MemberNotEnoughStarted,
        ServerError::MemberNotLearner,
        ServerError::BadLeaderTransferee,
        ServerError::WrongDowngradeVersionFormat,
        ServerError::InvalidDowngradeTargetVersion,
        ServerError::NoInflightDowngrade,
        ServerError::Stopped,
        ServerError::Unsealable,
        ServerError::Unsealed,
        ServerError::Engine,
        ServerError::InvalidSortOption,
        ServerError::LeaseExist,
        ServerError::LeaseTtlTooLarge,
        ServerError::DiskFull,
        ServerError::TooManyRequests,
        ServerError::Timeout,
        ServerError::WritesStopped,
        ServerError::Corrupt,
        ServerError::TooManyLeases,
        ServerError::CannotAddMembers,
        ServerError::ResponseTooLarge {
            size: 2147483648,
            limit: 2147483647,
        },
        ServerError::RootUserNotExist,
        ServerError::RootRoleNotExist,
        ServerError::UserAlreadyExist,
        ServerError::UserEmpty,
        ServerError::UserNotFound,
        ServerError::RoleAlreadyExist,
        ServerError::RoleNotFound,
        ServerError::RoleEmpty,
        ServerError::PermissionNotGiven,
        ServerError::PermissionDenied,
        ServerError::RoleNotGranted,
        ServerError::PermissionNotGranted,
        ServerError::InvalidAuthMgmt,
        ServerError::AuthOldRevision,
        ServerError::KmsUnavailable {
            provider: "vault".to_owned(),
        },
    ]
}

#[test]
fn every_server_error_has_etcds_code_and_text() {
    let mut seen = BTreeSet::new();
    for err in all() {
        let (index, code, text) = expected(&err);
        assert!(seen.insert(index), "{err:?} listed twice");
        let status = Status::from(err);
        assert_eq!(status.code(), code, "code of {text}");
        assert_eq!(status.message(), text);
    }
    assert_eq!(seen.len(), VARIANTS, "all() must list every variant once");
    assert_eq!(seen.into_iter().max(), Some(VARIANTS - 1));
}

#[test]
fn every_store_error_maps_to_the_right_etcd_error() {
    use coffer_store::Error as E;
    let secret_value = "sensitive-plaintext";
    let cases: Vec<(E, Code, &str)> = vec![
        (
            E::KeyNotFound,
            Code::InvalidArgument,
            "etcdserver: key not found",
        ),
        (
            E::LeaseNotFound,
            Code::NotFound,
            "etcdserver: requested lease not found",
        ),
        (
            E::LeaseExist,
            Code::FailedPrecondition,
            "etcdserver: lease already exists",
        ),
        (
            E::LeaseTtlTooLarge,
            Code::OutOfRange,
            "etcdserver: too large lease TTL",
        ),
        (
            E::Compacted,
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        ),
        (
            E::FutureRev,
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision",
        ),
        (
            E::NoSpace,
            Code::ResourceExhausted,
            "etcdserver: mvcc: database space exceeded",
        ),
        (E::Stopped, Code::Unavailable, "etcdserver: server stopped"),
        (
            E::RootUserNotExist,
            Code::FailedPrecondition,
            "etcdserver: root user does not exist",
        ),
        (
            E::RootRoleNotExist,
            Code::FailedPrecondition,
            "etcdserver: root user does not have root role",
        ),
        (
            E::UserAlreadyExist,
            Code::FailedPrecondition,
            "etcdserver: user name already exists",
        ),
        (
            E::UserEmpty,
            Code::InvalidArgument,
            "etcdserver: user name is empty",
        ),
        (
            E::UserNotFound,
            Code::FailedPrecondition,
            "etcdserver: user name not found",
        ),
        (
            E::RoleAlreadyExist,
            Code::FailedPrecondition,
            "etcdserver: role name already exists",
        ),
        (
            E::RoleNotFound,
            Code::FailedPrecondition,
            "etcdserver: role name not found",
        ),
        (
            E::RoleEmpty,
            Code::InvalidArgument,
            "etcdserver: role name is empty",
        ),
        (
            E::PermissionNotGiven,
            Code::InvalidArgument,
            "etcdserver: permission not given",
        ),
        (
            E::PermissionDenied,
            Code::PermissionDenied,
            "etcdserver: permission denied",
        ),
        (
            E::RoleNotGranted,
            Code::FailedPrecondition,
            "etcdserver: role is not granted to the user",
        ),
        (
            E::PermissionNotGranted,
            Code::FailedPrecondition,
            "etcdserver: permission is not granted to the role",
        ),
        (
            E::InvalidAuthMgmt,
            Code::InvalidArgument,
            "etcdserver: invalid auth management",
        ),
        (
            E::AuthOldRevision,
            Code::InvalidArgument,
            "etcdserver: revision of auth store is old",
        ),
        (
            E::DiskFull {
                available: 1,
                needed: 2,
            },
            Code::ResourceExhausted,
            "coffer: no space left on the data directory's disk; writes resume once space is freed",
        ),
        (
            E::Open {
                key: "/registry/secrets/default/s".into(),
                reason: format!("bad tag near {secret_value}"),
            },
            Code::Internal,
            "coffer: a stored value could not be opened (details in the server log)",
        ),
        (
            E::Seal {
                key: "/registry/secrets/default/s".into(),
                reason: format!("bad key near {secret_value}"),
            },
            Code::Internal,
            "coffer: a value could not be sealed (details in the server log)",
        ),
        (
            E::KmsUnavailable {
                key: "/registry/secrets/default/s".into(),
                provider: "vault".into(),
                reason: format!("no write state near {secret_value}"),
            },
            Code::Unavailable,
            "coffer: KMS provider \"vault\" is unavailable: writes under it are stopped until \
             its plugin answers a healthy Status (details in the server log)",
        ),
        (
            E::TooManyRequests,
            Code::Unknown,
            "etcdserver: too many requests",
        ),
        (
            E::OutcomeUnknown(format!("fdatasync failed near {secret_value}")),
            Code::Unavailable,
            "etcdserver: request timed out",
        ),
        (
            E::WritesStopped(format!("engine commit near {secret_value}")),
            Code::Unavailable,
            "coffer: writes are stopped after a failed commit; restart the server to recover \
             from its write-ahead log (details in the server log)",
        ),
        (
            E::Corrupt(format!("record of /registry/x near {secret_value}")),
            Code::DataLoss,
            "coffer: stored data is damaged (details in the server log)",
        ),
        (
            E::TooManyLeases { max: 3 },
            Code::ResourceExhausted,
            "coffer: too many leases; revoke unused leases or raise --max-leases",
        ),
        (
            E::Engine(format!("disk full writing {secret_value}")),
            Code::Internal,
            "coffer: the storage engine failed (details in the server log)",
        ),
    ];
    for (err, code, text) in cases {
        let status = Status::from(ServerError::from(err));
        assert_eq!(status.code(), code);
        assert_eq!(status.message(), text);
        assert!(!status.message().contains(secret_value));
        assert!(!status.message().contains("/registry"));
    }
}
