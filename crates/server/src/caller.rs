//! Who a request comes from, as the store's [`Caller`]: the one place the server turns a gRPC
//! request into the identity and auth revision its permission checks run against.
//!
//! For now every request is [`Caller::Anonymous`]; identity from tokens (metadata `token`)
//! and client certificates (the Common Name) is wired here next. While auth is disabled the
//! store allows anonymous callers everything, so this changes nothing until then.

use coffer_store::Caller;

/// The caller of `req`.
pub fn caller_of<T>(req: &tonic::Request<T>) -> Caller {
    let _ = req;
    Caller::Anonymous
}
