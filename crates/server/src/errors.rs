//! The one table from Coffer's errors to etcd's gRPC status codes and `etcdserver: ...` strings.
//!
//! Clients (clientv3, kube-apiserver) turn the message text back into typed errors, so every
//! message here is byte-exact with etcd's `api/v3rpc/rpctypes/error.go` (3.5). Errors etcd does
//! not have (a value that cannot be opened, an engine failure) reach the client as `INTERNAL`
//! with a message that names neither the key nor the value; the details go to the server log.

use tonic::{Code, Status};

/// Everything a request can fail with, before or inside the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A key (of a request, a compare or a nested op) is empty.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// A `RequestOp` with no operation set, or `ignore_*` on a missing key.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// `ignore_value` together with a value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// `ignore_lease` together with a lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// More operations in a txn (or a nested txn) than `--max-txn-ops` allows.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// Two writes of one key in a txn branch.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// A write request larger than `--max-request-bytes`.
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// A bounded resource (the writer's queue, concurrent snapshots) is full; retry later
    /// (etcd's `ErrTooManyRequests`, which etcd sends as UNKNOWN).
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    /// A response larger than `--max-response-bytes`: gRPC-go's text for a message over the
    /// server's send limit.
    #[error("grpc: trying to send message larger than max ({size} vs. {limit})")]
    ResponseTooLarge {
        /// Encoded size of the response.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The requested revision was compacted.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// The requested revision is in the future.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    /// The NOSPACE alarm is active.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// A Range `sort_order` or `sort_target` outside its enum.
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    /// A lease that does not exist.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// LeaseGrant with an id already in use.
    #[error("etcdserver: lease already exists")]
    LeaseExist,
    /// LeaseGrant with a TTL above etcd's MaxLeaseTTL.
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// A member ID that is not this member.
    #[error("etcdserver: member not found")]
    MemberNotFound,
    /// Malformed peer URLs in a membership change.
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    /// A single member cannot add or remove voting members (etcd sends this as UNKNOWN).
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    MemberNotEnoughStarted,
    /// MemberAdd: Coffer is one member by design and never joins a cluster.
    #[error(
        "coffer: a single-member server cannot add members; Coffer always runs as one member: \
         for a standby, copy it with `etcdctl snapshot save` and `coffer snapshot restore`, or \
         use etcd for a multi-member cluster"
    )]
    CannotAddMembers,
    /// Promoting a member that is not a learner.
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    /// MoveLeader to anything but this member.
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    /// A downgrade version that is not `major.minor.patch`.
    #[error("etcdserver: wrong downgrade target version format")]
    WrongDowngradeVersionFormat,
    /// A downgrade this server cannot perform.
    #[error("etcdserver: invalid downgrade target version")]
    InvalidDowngradeTargetVersion,
    /// Cancelling a downgrade when none runs.
    #[error("etcdserver: no inflight downgrade job")]
    NoInflightDowngrade,
    /// The server or store is shutting down.
    #[error("etcdserver: server stopped")]
    Stopped,
    /// A stored value could not be opened. The key and the reason stay in the server log.
    #[error("coffer: a stored value could not be opened (details in the server log)")]
    Unsealable,
    /// A write needs a KMS plugin that has not answered a healthy Status within its write
    /// window. Names the provider (public), never the key or the value.
    #[error(
        "coffer: KMS provider {provider:?} is unavailable: writes under it are stopped until \
         its plugin answers a healthy Status (details in the server log)"
    )]
    KmsUnavailable {
        /// The KMS provider's configured name.
        provider: String,
    },
    /// A value could not be sealed. Details stay in the server log.
    #[error("coffer: a value could not be sealed (details in the server log)")]
    Unsealed,
    /// The data directory's disk is full; writes are refused until space is freed.
    #[error(
        "coffer: no space left on the data directory's disk; writes resume once space is freed"
    )]
    DiskFull,
    /// The storage engine failed. Details stay in the server log.
    #[error("coffer: the storage engine failed (details in the server log)")]
    Engine,
    /// A write's outcome is unknown (it may have been applied); etcd's timeout, which clients
    /// treat as "look again".
    #[error("etcdserver: request timed out")]
    Timeout,
    /// Writes are refused since a commit's outcome became unknown, until a restart.
    #[error(
        "coffer: writes are stopped after a failed commit; restart the server to recover from \
         its write-ahead log (details in the server log)"
    )]
    WritesStopped,
    /// Stored data failed its checksum. Details stay in the server log.
    #[error("coffer: stored data is damaged (details in the server log)")]
    Corrupt,
    /// AuthEnable without a user `root`.
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    /// AuthEnable while user `root` lacks role `root`.
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    /// UserAdd of an existing name.
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    /// An empty user name, or no user while auth is enabled.
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    /// A user that does not exist.
    #[error("etcdserver: user name not found")]
    UserNotFound,
    /// RoleAdd of an existing name.
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    /// A role that does not exist.
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    /// An empty role name.
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    /// RoleGrantPermission without a permission.
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    /// The caller lacks the permission the request needs.
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    /// UserRevokeRole of a role the user does not hold.
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    /// RoleRevokePermission of a permission the role does not have.
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    /// Removing root's rights while auth is enabled; an invalid permission range.
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    /// The request was authenticated before the last auth change.
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    /// The store's lease limit is reached.
    #[error("coffer: too many leases; revoke unused leases or raise --max-leases")]
    TooManyLeases,
}

impl ServerError {
    /// The gRPC code etcd sends for this error.
    pub fn code(&self) -> Code {
        match self {
            ServerError::EmptyKey
            | ServerError::KeyNotFound
            | ServerError::ValueProvided
            | ServerError::LeaseProvided
            | ServerError::TooManyOps
            | ServerError::DuplicateKey
            | ServerError::RequestTooLarge
            | ServerError::InvalidSortOption
            | ServerError::MemberBadUrls
            | ServerError::WrongDowngradeVersionFormat
            | ServerError::InvalidDowngradeTargetVersion => Code::InvalidArgument,
            ServerError::Compacted | ServerError::FutureRev | ServerError::LeaseTtlTooLarge => {
                Code::OutOfRange
            }
            ServerError::LeaseExist => Code::FailedPrecondition,
            ServerError::CannotAddMembers => Code::Unimplemented,
            ServerError::NoSpace
            | ServerError::DiskFull
            | ServerError::TooManyLeases
            | ServerError::ResponseTooLarge { .. } => Code::ResourceExhausted,
            ServerError::LeaseNotFound | ServerError::MemberNotFound => Code::NotFound,
            // etcd maps this one to a client-side error value without a gRPC status, so gRPC
            // sends it as UNKNOWN (observed on 3.4.23; same mapping in 3.5/3.6 source).
            ServerError::MemberNotEnoughStarted | ServerError::TooManyRequests => Code::Unknown,
            ServerError::MemberNotLearner
            | ServerError::BadLeaderTransferee
            | ServerError::NoInflightDowngrade => Code::FailedPrecondition,
            ServerError::Stopped
            | ServerError::Timeout
            | ServerError::WritesStopped
            | ServerError::KmsUnavailable { .. } => Code::Unavailable,
            ServerError::RootUserNotExist
            | ServerError::RootRoleNotExist
            | ServerError::UserAlreadyExist
            | ServerError::UserNotFound
            | ServerError::RoleAlreadyExist
            | ServerError::RoleNotFound
            | ServerError::RoleNotGranted
            | ServerError::PermissionNotGranted => Code::FailedPrecondition,
            ServerError::UserEmpty
            | ServerError::RoleEmpty
            | ServerError::PermissionNotGiven
            | ServerError::InvalidAuthMgmt
            | ServerError::AuthOldRevision => Code::InvalidArgument,
            ServerError::PermissionDenied => Code::PermissionDenied,
            ServerError::Corrupt => Code::DataLoss,
            ServerError::Unsealable | ServerError::Unsealed | ServerError::Engine => Code::Internal,
        }
    }
}

impl From<ServerError> for Status {
    fn from(err: ServerError) -> Self {
        Status::new(err.code(), err.to_string())
    }
}

impl From<coffer_store::Error> for ServerError {
    fn from(err: coffer_store::Error) -> Self {
        use coffer_store::Error as E;
        match err {
            E::KeyNotFound => ServerError::KeyNotFound,
            E::LeaseNotFound => ServerError::LeaseNotFound,
            E::LeaseExist => ServerError::LeaseExist,
            E::LeaseTtlTooLarge => ServerError::LeaseTtlTooLarge,
            E::Compacted => ServerError::Compacted,
            E::FutureRev => ServerError::FutureRev,
            E::NoSpace => ServerError::NoSpace,
            E::Stopped => ServerError::Stopped,
            E::DiskFull { available, needed } => {
                tracing::error!(
                    available,
                    needed,
                    "the data directory's disk is full: writes are refused until space is freed"
                );
                ServerError::DiskFull
            }
            E::Open { .. } => {
                // The store's message names the etcd key and the seal's reason, never a value.
                tracing::error!(error = %err, "a stored value could not be opened");
                ServerError::Unsealable
            }
            E::KmsUnavailable { ref provider, .. } => {
                tracing::error!(error = %err, "a write was refused: its KMS plugin is unavailable");
                ServerError::KmsUnavailable {
                    provider: provider.clone(),
                }
            }
            E::Seal { .. } => {
                tracing::error!(error = %err, "a value could not be sealed");
                ServerError::Unsealed
            }
            E::RootUserNotExist => ServerError::RootUserNotExist,
            E::RootRoleNotExist => ServerError::RootRoleNotExist,
            E::UserAlreadyExist => ServerError::UserAlreadyExist,
            E::UserEmpty => ServerError::UserEmpty,
            E::UserNotFound => ServerError::UserNotFound,
            E::RoleAlreadyExist => ServerError::RoleAlreadyExist,
            E::RoleNotFound => ServerError::RoleNotFound,
            E::RoleEmpty => ServerError::RoleEmpty,
            E::PermissionNotGiven => ServerError::PermissionNotGiven,
            E::PermissionDenied => ServerError::PermissionDenied,
            E::RoleNotGranted => ServerError::RoleNotGranted,
            E::PermissionNotGranted => ServerError::PermissionNotGranted,
            E::InvalidAuthMgmt => ServerError::InvalidAuthMgmt,
            E::AuthOldRevision => ServerError::AuthOldRevision,
            E::TooManyRequests => ServerError::TooManyRequests,
            E::TooManyLeases { .. } => ServerError::TooManyLeases,
            E::OutcomeUnknown(_) => {
                tracing::error!(error = %err, "a write's outcome is unknown");
                ServerError::Timeout
            }
            E::WritesStopped(_) => ServerError::WritesStopped,
            E::Corrupt(_) => {
                tracing::error!(error = %err, "damaged data");
                ServerError::Corrupt
            }
            other => {
                tracing::error!(error = %other, "storage engine failure");
                ServerError::Engine
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
