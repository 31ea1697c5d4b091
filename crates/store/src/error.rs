//! Store errors. Each variant that etcd defines maps to etcd's gRPC code and message in the
//! server's one error table; the others become `Internal`-style errors that reveal nothing
//! about keys or values.

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `ignore_value`/`ignore_lease` on a key that does not exist (etcd: `key not found`).
    #[error("key not found")]
    KeyNotFound,
    /// A Put names a lease that does not exist (etcd: `requested lease not found`).
    #[error("requested lease not found")]
    LeaseNotFound,
    /// LeaseGrant with an id already in use (etcd: `lease already exists`).
    #[error("lease already exists")]
    LeaseExist,
    /// LeaseGrant with a TTL above 9,000,000,000 s (etcd: `too large lease TTL`).
    #[error("too large lease TTL")]
    LeaseTtlTooLarge,
    /// The requested revision was compacted.
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    /// The requested revision is in the future.
    #[error("mvcc: required revision is a future revision")]
    FutureRev,
    /// The NOSPACE alarm is active or the write would exceed the quota.
    #[error("mvcc: database space exceeded")]
    NoSpace,
    /// A stored value could not be opened (sealed by a key this server does not have, or
    /// corrupt). Names the etcd key, never the value.
    #[error("unable to open the value stored at key {key:?}: {reason}")]
    Open {
        /// The etcd key, lossily printed.
        key: String,
        /// What the seal said.
        reason: String,
    },
    /// A value could not be sealed because the KMS plugin of its provider is unavailable
    /// (no healthy Status within the write window, or never yet). Nothing was written.
    #[error("unable to seal the value for key {key:?}: KMS provider {provider:?} is unavailable: {reason}")]
    KmsUnavailable {
        /// The etcd key, lossily printed.
        key: String,
        /// The KMS provider's configured name.
        provider: String,
        /// What the seal said.
        reason: String,
    },
    /// A value could not be sealed.
    #[error("unable to seal the value for key {key:?}: {reason}")]
    Seal {
        /// The etcd key, lossily printed.
        key: String,
        /// What the seal said.
        reason: String,
    },
    /// The data directory's file system has too little free space for a write: refused before
    /// it touches the log or the engine, so nothing is half written and writes resume by
    /// themselves once space is freed.
    #[error(
        "no space left on the data directory's disk: {available} bytes free, {needed} needed; \
         writes resume once space is freed"
    )]
    DiskFull {
        /// Bytes available to the server.
        available: u64,
        /// Bytes the store keeps free before it writes.
        needed: u64,
    },
    /// The storage engine failed (I/O, an engine refusal).
    #[error("storage engine: {0}")]
    Engine(String),
    /// Stored data is damaged: a record, the meta or the log failed its checksum or is missing.
    /// Says which file, revision or offset; a store refuses to start with it rather than serve
    /// less than was acknowledged.
    #[error("damaged data: {0}")]
    Corrupt(String),
    /// A write may or may not have been applied: the log append or the engine commit failed
    /// after the write started reaching the disk. A restart replays the log and settles it.
    /// (etcd's clients know this outcome as "request timed out".)
    #[error("the outcome of the write is unknown: {0}")]
    OutcomeUnknown(String),
    /// Writes are refused since a commit's outcome became unknown; reads go on. A restart
    /// recovers from the log.
    #[error("the store stopped accepting writes after a failed commit ({0}); restart the server to recover from the write-ahead log")]
    WritesStopped(String),
    /// The writer's queue is full (etcd: `too many requests`).
    #[error("too many requests")]
    TooManyRequests,
    /// LeaseGrant beyond the store's lease limit.
    #[error("too many leases: the store holds its limit of {max}; revoke unused leases or raise --max-leases")]
    TooManyLeases {
        /// The limit.
        max: usize,
    },
    /// AuthEnable without a user `root`.
    #[error("root user does not exist")]
    RootUserNotExist,
    /// AuthEnable while user `root` lacks role `root`.
    #[error("root user does not have root role")]
    RootRoleNotExist,
    /// UserAdd of an existing name.
    #[error("user name already exists")]
    UserAlreadyExist,
    /// An empty user name, or a request that names no user while auth is enabled.
    #[error("user name is empty")]
    UserEmpty,
    /// A user that does not exist.
    #[error("user name not found")]
    UserNotFound,
    /// RoleAdd of an existing name.
    #[error("role name already exists")]
    RoleAlreadyExist,
    /// A role that does not exist.
    #[error("role name not found")]
    RoleNotFound,
    /// An empty role name.
    #[error("role name is empty")]
    RoleEmpty,
    /// RoleGrantPermission without a permission.
    #[error("permission not given")]
    PermissionNotGiven,
    /// The caller lacks the permission (or the root role) the request needs.
    #[error("permission denied")]
    PermissionDenied,
    /// UserRevokeRole of a role the user does not hold.
    #[error("role is not granted to the user")]
    RoleNotGranted,
    /// RoleRevokePermission of a permission the role does not have.
    #[error("permission is not granted to the role")]
    PermissionNotGranted,
    /// Removing root's rights while auth is enabled, or a permission with an empty key or a
    /// range end at or before its key.
    #[error("invalid auth management")]
    InvalidAuthMgmt,
    /// The request was authenticated before the last auth change (etcd's
    /// `revision of auth store is old`): the client authenticates again.
    #[error("revision of auth store is old")]
    AuthOldRevision,
    /// The store is shutting down.
    #[error("store stopped")]
    Stopped,
}
