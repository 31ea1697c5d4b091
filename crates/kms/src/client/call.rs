//! One provider's connection and the machinery every RPC goes through: the lazy channel, the
//! deadline, wait-for-ready retries (until the plugin answers), the hand-off between the
//! caller's thread and the client's runtime, error texts and metrics.

use std::error::Error as _;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_seal::key_service::KeyServiceError;
use coffer_seal::SecretBytes;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::Code;

use super::runtime::ClientRuntime;
use crate::endpoint::SocketAddress;

/// How much longer than the provider's timeout a caller waits for the runtime to report (the
/// RPC itself is cut at the timeout; this only covers hand-off and scheduling).
pub const CALLER_GRACE: Duration = Duration::from_millis(500);

/// First pause between attempts while the socket is absent or refuses.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
/// Longest pause between attempts.
const MAX_BACKOFF: Duration = Duration::from_millis(200);

/// The longest deadline a call gets when its timeout overflows the clock (about a year).
const LONGEST_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// The URI every request is sent to: `:authority` is `localhost`, as kube-apiserver 1.32+
/// sends it (the socket path is not a valid authority for strict HTTP/2 servers).
const AUTHORITY_URI: &str = "http://localhost";

/// The connector's error while the socket cannot be dialled; found again in the returned
/// `Status`'s source chain to tell "not ready yet" (retry) from an answer (do not).
#[derive(Debug)]
struct SocketNotReady(std::io::Error);

impl fmt::Display for SocketNotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot connect to the plugin socket: {}", self.0)
    }
}

impl std::error::Error for SocketNotReady {}

/// Why an RPC did not produce an answer.
#[derive(Debug)]
pub(crate) enum CallError {
    /// The plugin (or the transport, once connected) returned a gRPC error.
    Status { code: Code, message: String },
    /// No answer before the deadline; `last` says why the last attempt got none (the socket
    /// could not be dialled, or the connection closed before an answer).
    Timeout { last: Option<String> },
    /// The client's runtime is gone (only at process shutdown).
    RuntimeGone,
}

impl CallError {
    fn code(&self) -> Code {
        match self {
            CallError::Status { code, .. } => *code,
            CallError::Timeout { .. } => Code::DeadlineExceeded,
            CallError::RuntimeGone => Code::Unavailable,
        }
    }
}

/// One provider's plugin: its names, its channel and its timeout.
pub(crate) struct Target {
    runtime: Arc<ClientRuntime>,
    provider: String,
    endpoint: String,
    timeout: Duration,
    channel: Channel,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("provider", &self.provider)
            .field("endpoint", &self.endpoint)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// A lazily connected channel to `address` (nothing is dialled until the first call).
    pub(crate) fn new(
        runtime: Arc<ClientRuntime>,
        provider: String,
        endpoint: String,
        address: SocketAddress,
        timeout: Duration,
    ) -> Self {
        // The channel's worker task must live on the client's runtime.
        let _guard = runtime.handle().enter();
        let connector = tower::service_fn(move |_: Uri| {
            let address = address.clone();
            async move {
                address
                    .connect()
                    .await
                    .map(TokioIo::new)
                    .map_err(SocketNotReady)
            }
        });
        let channel = Endpoint::from_static(AUTHORITY_URI).connect_with_connector_lazy(connector);
        Self {
            runtime,
            provider,
            endpoint,
            timeout,
            channel,
        }
    }

    /// The channel (clone it into each RPC).
    pub(crate) fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The deadline of a call starting now.
    pub(crate) fn deadline(&self) -> Instant {
        let now = Instant::now();
        // A timeout too large for the clock (a config typo) waits as long as it can.
        now.checked_add(self.timeout)
            .unwrap_or_else(|| now + LONGEST_TIMEOUT)
    }

    /// Runs `rpc` on the client's runtime until it answers, retrying while the socket cannot
    /// be dialled, cut at `deadline`; `rpc` is given the time left, for [`timed`]. Blocks the
    /// calling thread (never running a runtime on it) until then plus [`CALLER_GRACE`].
    pub(crate) fn call<T, F, Fut>(&self, deadline: Instant, rpc: F) -> Result<T, CallError>
    where
        F: FnMut(Duration) -> Fut + Send + 'static,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let until = tokio::time::Instant::from_std(deadline);
        self.runtime.handle().spawn(async move {
            let _ = tx.send(until_answered(until, rpc).await);
        });
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .saturating_add(CALLER_GRACE);
        match rx.recv_timeout(wait) {
            Ok(result) => result,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                Err(CallError::Timeout { last: None })
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(CallError::RuntimeGone),
        }
    }

    /// Records a call's outcome (`result` as in `coffer_kms_calls_total`).
    pub(crate) fn record(&self, rpc: &str, result: &str, started: Instant) {
        coffer_metrics::kms::kms().call(
            &self.provider,
            rpc,
            result,
            started.elapsed().as_secs_f64(),
        );
    }

    /// Records a failed call and turns it into seal's error.
    pub(crate) fn failed(&self, rpc: &str, started: Instant, e: CallError) -> KeyServiceError {
        let code = e.code();
        self.record(rpc, code_snake(code), started);
        let desc = match e {
            CallError::Status { message, .. } => message,
            CallError::Timeout { last: Some(why) } => {
                format!("no answer within the timeout of {:?}: {why}", self.timeout)
            }
            CallError::Timeout { last: None } => {
                format!("no answer within the timeout of {:?}", self.timeout)
            }
            CallError::RuntimeGone => "the KMS client's runtime has stopped".to_owned(),
        };
        let text = format!(
            "{}: rpc error: code = {} desc = {desc}",
            self.describe(rpc),
            code_name(code)
        );
        tracing::debug!(provider = %self.provider, rpc, code = code_name(code), "KMS plugin call failed");
        match code {
            Code::Unavailable | Code::DeadlineExceeded => KeyServiceError::Unavailable(text),
            _ => KeyServiceError::Failed(text),
        }
    }

    /// Records an answer that breaks the protocol and turns it into seal's error.
    pub(crate) fn invalid(&self, rpc: &str, started: Instant, why: &str) -> KeyServiceError {
        self.record(rpc, "invalid", started);
        tracing::debug!(provider = %self.provider, rpc, "KMS plugin answer refused");
        KeyServiceError::Failed(format!("{}: {why}", self.describe(rpc)))
    }

    /// Takes a Decrypt answer's plaintext (moved, not copied) unless it is empty.
    pub(crate) fn unwrapped(
        &self,
        started: Instant,
        plaintext: Vec<u8>,
    ) -> Result<SecretBytes, KeyServiceError> {
        let plaintext = SecretBytes::new(plaintext);
        if plaintext.is_empty() {
            return Err(self.invalid(
                "Decrypt",
                started,
                "the plugin's Decrypt answer has an empty plaintext",
            ));
        }
        self.record("Decrypt", "ok", started);
        Ok(plaintext)
    }

    fn describe(&self, rpc: &str) -> String {
        format!(
            "KMS provider {:?} (plugin at {}): {rpc}",
            self.provider, self.endpoint
        )
    }
}

/// Attempts `rpc` until the plugin answers or `deadline` passes. An attempt the plugin gave no
/// answer to (the socket could not be dialled, or the connection closed first) is retried with
/// a short backoff, like gRPC's wait-for-ready; any answer is final.
async fn until_answered<T, F, Fut>(
    deadline: tokio::time::Instant,
    mut rpc: F,
) -> Result<T, CallError>
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let mut backoff = FIRST_BACKOFF;
    let mut last = None;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout_at(deadline, rpc(left)).await {
            Err(_) => return Err(CallError::Timeout { last }),
            Ok(Ok(answer)) => return Ok(answer.into_inner()),
            Ok(Err(status)) => match not_answered(&status) {
                Some(why) => {
                    last = Some(why);
                    let now = tokio::time::Instant::now();
                    if now >= deadline {
                        return Err(CallError::Timeout { last });
                    }
                    tokio::time::sleep_until((now + backoff).min(deadline)).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                // The plugin gave up at the deadline its `grpc-timeout` named (tonic answers
                // Cancelled, grpc-go DeadlineExceeded) just before our own timer fired: that
                // is this call's timeout, reported as such.
                None if matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded)
                    && tokio::time::Instant::now() >= deadline =>
                {
                    return Err(CallError::Timeout { last });
                }
                None => {
                    return Err(CallError::Status {
                        code: status.code(),
                        message: status.message().to_owned(),
                    })
                }
            },
        }
    }
}

/// `message` as a request carrying `left` as its `grpc-timeout`, so the plugin may stop working
/// on a call its caller has given up on (kube-apiserver's client sends its deadline the same
/// way).
pub(crate) fn timed<T>(message: T, left: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(left);
    request
}

/// Why the plugin gave no answer, if `status` is not one: the socket could not be dialled, or
/// the connection failed before an answer came. Such statuses carry the transport's error as
/// their source; an answer decoded from the plugin never does. Repeating a KMS call is safe:
/// Status and Decrypt change nothing, and a repeated Encrypt wraps the same seed again.
fn not_answered(status: &tonic::Status) -> Option<String> {
    // An answer decoded from the plugin carries no source.
    let mut source = Some(status.source()?);
    let mut chain = Vec::new();
    while let Some(e) = source {
        if let Some(n) = e.downcast_ref::<SocketNotReady>() {
            return Some(format!(
                "the plugin socket never became reachable ({})",
                n.0
            ));
        }
        chain.push(e.to_string());
        source = e.source();
    }
    Some(format!(
        "the connection to the plugin failed before an answer ({})",
        chain.join(": ")
    ))
}

/// Go's name of a gRPC code, as in `rpc error: code = Unavailable desc = ...`.
pub(crate) fn code_name(code: Code) -> &'static str {
    coffer_metrics::grpc_code_name(code as u32)
}

/// The code in snake case, the `result` label of `coffer_kms_calls_total`.
pub(crate) fn code_snake(code: Code) -> &'static str {
    coffer_metrics::grpc_code_label(code as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_follow_go_and_prometheus_conventions() {
        assert_eq!(code_name(Code::DeadlineExceeded), "DeadlineExceeded");
        assert_eq!(code_snake(Code::DeadlineExceeded), "deadline_exceeded");
        assert_eq!(code_snake(Code::FailedPrecondition), "failed_precondition");
        assert_eq!(code_name(Code::Cancelled), "Canceled");
    }

    #[test]
    fn an_enormous_timeout_does_not_overflow_the_clock() {
        let runtime = ClientRuntime::start().unwrap();
        let target = Target::new(
            runtime,
            "p".to_owned(),
            "unix:///@x".to_owned(),
            SocketAddress::Abstract(b"x".to_vec()),
            Duration::MAX,
        );
        assert!(target.deadline() > Instant::now() + Duration::from_secs(3600));
    }

    #[test]
    fn only_statuses_without_an_answer_are_retried() {
        // Answers of the plugin, whatever their code, are final.
        for code in [Code::Unavailable, Code::Unknown, Code::Internal] {
            assert!(not_answered(&tonic::Status::new(code, "plugin says no")).is_none());
        }
        let dial = tonic::Status::from_error(Box::new(SocketNotReady(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        ))));
        let why = not_answered(&dial).unwrap();
        assert!(why.contains("never became reachable"), "{why}");
        let closed = tonic::Status::from_error(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        let why = not_answered(&closed).unwrap();
        assert!(why.contains("failed before an answer"), "{why}");
    }
}
