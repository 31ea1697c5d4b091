//! Connection hardening on real sockets: the connection limit, the handshake and idle
//! timeouts (an open Watch stream is not idle), and HTTP/2 keepalive dropping a peer that
//! never answers PING.

use std::time::{Duration, Instant};

use coffer_proto::{
    kv_client::KvClient, watch_client::WatchClient, watch_request::RequestUnion, PutRequest,
    WatchCreateRequest, WatchRequest,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{channel, shutdown, start_configured};

fn addr(r: &super::Running) -> String {
    r.endpoint.trim_start_matches("http://").to_owned()
}

/// Sends `GET /health` on `s` and reads the status line, or times out.
async fn health(s: &mut TcpStream, wait: Duration) -> Option<String> {
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(wait, s.read(&mut buf))
        .await
        .ok()?
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    text.lines().next().map(str::to_owned)
}

/// Reads until the server closes; returns what it sent and how long that took.
async fn until_closed(s: &mut TcpStream) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("the server closes the connection")
        .unwrap();
    (got, started.elapsed())
}

#[tokio::test]
async fn connections_beyond_the_limit_wait() {
    let r = start_configured(0, |c| c.transport.max_connections = 1).await;
    let mut first = TcpStream::connect(addr(&r)).await.unwrap();
    assert_eq!(
        health(&mut first, Duration::from_secs(5)).await.as_deref(),
        Some("HTTP/1.1 200 OK")
    );
    let mut second = TcpStream::connect(addr(&r)).await.unwrap();
    assert_eq!(health(&mut second, Duration::from_millis(500)).await, None);
    drop(first);
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf))
        .await
        .expect("served once the first connection closed")
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK"));
    shutdown(r).await;
}

#[tokio::test]
async fn idle_connections_close_but_open_streams_do_not() {
    let idle = Duration::from_millis(300);
    let r = start_configured(0, |c| c.transport.idle_timeout = idle).await;
    // A connection that never sends a request.
    let mut quiet = TcpStream::connect(addr(&r)).await.unwrap();
    let (got, took) = until_closed(&mut quiet).await;
    assert!(got.is_empty());
    assert!(took >= idle && took < Duration::from_secs(3), "{took:?}");

    // A Watch stream quiet for many idle timeouts still gets its event.
    let mut watch = WatchClient::new(channel(&r).await);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: b"w".to_vec(),
            ..WatchCreateRequest::default()
        })),
    })
    .await
    .unwrap();
    let mut events = watch
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert!(events.message().await.unwrap().unwrap().created);
    tokio::time::sleep(idle * 5).await;
    let mut kv = KvClient::new(channel(&r).await);
    kv.put(PutRequest {
        key: b"w".to_vec(),
        value: b"1".to_vec(),
        ..PutRequest::default()
    })
    .await
    .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), events.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.events[0].kv.as_ref().unwrap().value, b"1");
    drop(tx);
    shutdown(r).await;
}

#[tokio::test]
async fn a_peer_that_never_answers_ping_is_dropped() {
    let (interval, timeout) = (Duration::from_millis(200), Duration::from_millis(200));
    let r = start_configured(0, |c| {
        c.transport.keepalive_interval = interval;
        c.transport.keepalive_timeout = timeout;
    })
    .await;
    let mut s = TcpStream::connect(addr(&r)).await.unwrap();
    // The HTTP/2 preface and an empty SETTINGS frame; then silence.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let (got, took) = until_closed(&mut s).await;
    // Walk the frames the server sent: a PING (type 6) without ACK must be among them.
    let mut frames = Vec::new();
    let mut rest = &got[..];
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        frames.push((rest[3], rest[4]));
        rest = &rest[(9 + len).min(rest.len())..];
    }
    assert!(frames.contains(&(6, 0)), "frames: {frames:?}");
    assert!(
        took >= interval + timeout && took < Duration::from_secs(5),
        "{took:?}"
    );
    shutdown(r).await;
}

#[tokio::test]
async fn a_stalled_tls_handshake_is_dropped() {
    let p = std::time::Duration::from_millis(300);
    let r = super::tls::tls_server_with(|c| c.transport.handshake_timeout = p).await;
    let mut s = TcpStream::connect(r.addr()).await.unwrap();
    // The first byte of a TLS record, then nothing.
    s.write_all(&[0x16]).await.unwrap();
    let (got, took) = until_closed(&mut s).await;
    assert!(got.is_empty());
    assert!(took >= p && took < Duration::from_secs(3), "{took:?}");
    r.stop().await;
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_pending_handshake() {
    let r = super::tls::tls_server_with(|_| {}).await;
    let mut s = TcpStream::connect(r.addr()).await.unwrap();
    s.write_all(&[0x16]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    r.stop().await;
    // The handshake timeout is 10 s; the drain must not wait for it.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}
