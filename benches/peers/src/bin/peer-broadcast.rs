//! tokio-tungstenite pub/sub server on a current_thread runtime: wsd's `--mode pubsub` peer.
//!
//! The broadcast server a Rust user would write instead of running wsd: one
//! `tokio::sync::broadcast` channel per request path (created by its first subscriber, dropped
//! with its last), and every data message a client sends is rebroadcast to its path's channel,
//! the sender included — the semantics of wsd with `client_publish = true`, so the same
//! `wsd-load pubsub --publish ws` drives both. A receiver that falls more than
//! [`CHANNEL_CAPACITY`] messages behind skips what it missed (`Lagged`), as a real user's would;
//! the skipped messages are counted and reported on stderr.
//!
//! With `--api-listen ADDR` it also serves wsd's HTTP publish API on hyper: `POST
//! /publish/{channel}` with the body as the message (text for `text/plain` and
//! `application/json`, binary otherwise), answered `{"channel":…,"subscribers":N}`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Messages a channel holds for its slowest receiver before that receiver starts skipping.
/// Well above the publications `wsd-load pubsub` keeps in flight, so a run that lags is one
/// where a subscriber really could not keep up.
const CHANNEL_CAPACITY: usize = 1024;
/// Largest message accepted from a client (the echo peers allow the same).
const MAX_MESSAGE: usize = 64 << 20;
/// How often the lag counter is reported on stderr when it has grown.
const LAG_REPORT_EVERY: Duration = Duration::from_secs(1);

/// Channel name → its sender; receivers are made from the sender.
type Channels = Arc<Mutex<HashMap<String, broadcast::Sender<Message>>>>;

/// Messages skipped by lagging receivers, over all connections.
static SKIPPED: AtomicU64 = AtomicU64::new(0);

/// Subscribes to `name`, creating its channel on first use.
fn subscribe(
    channels: &Channels,
    name: &str,
) -> (broadcast::Sender<Message>, broadcast::Receiver<Message>) {
    let mut map = channels.lock().unwrap_or_else(|e| e.into_inner());
    let tx = map
        .entry(name.to_string())
        .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
        .clone();
    let rx = tx.subscribe();
    (tx, rx)
}

/// Drops `name`'s channel once its last receiver is gone, so channels do not pile up.
fn unsubscribe(channels: &Channels, name: &str, rx: broadcast::Receiver<Message>) {
    let mut map = channels.lock().unwrap_or_else(|e| e.into_inner());
    drop(rx);
    if map.get(name).is_some_and(|tx| tx.receiver_count() == 0) {
        map.remove(name);
    }
}

async fn serve(stream: TcpStream, channels: Channels) {
    let _ = stream.set_nodelay(true);
    let config = WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE));
    let mut path = String::new();
    // The signature, large error response included, is tungstenite's handshake `Callback`.
    #[allow(clippy::result_large_err)]
    let record_path = |req: &Request, resp: Response| {
        path = req.uri().path().to_string();
        Ok(resp)
    };
    let Ok(mut ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, record_path, Some(config)).await
    else {
        return;
    };
    // wsd's channel for `/news` is `news`.
    let name = path.trim_start_matches('/').to_string();
    let (tx, mut rx) = subscribe(&channels, &name);
    loop {
        tokio::select! {
            incoming = ws.next() => match incoming {
                Some(Ok(msg @ (Message::Text(_) | Message::Binary(_)))) => {
                    // Never fails: this connection's own receiver is subscribed.
                    let _ = tx.send(msg);
                }
                Some(Ok(Message::Close(_))) => {
                    // Sends the Close reply tungstenite queued.
                    let _ = ws.flush().await;
                    break;
                }
                Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            received = rx.recv() => {
                let first = match received {
                    Ok(msg) => msg,
                    Err(RecvError::Lagged(n)) => {
                        SKIPPED.fetch_add(n, Ordering::Relaxed);
                        continue;
                    }
                    Err(RecvError::Closed) => break,
                };
                // Queue what else is ready, then write it all with one flush.
                if ws.feed(first).await.is_err() {
                    break;
                }
                let mut failed = false;
                loop {
                    match rx.try_recv() {
                        Ok(msg) => {
                            if ws.feed(msg).await.is_err() {
                                failed = true;
                                break;
                            }
                        }
                        Err(broadcast::error::TryRecvError::Lagged(n)) => {
                            SKIPPED.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(_) => break,
                    }
                }
                if failed || ws.flush().await.is_err() {
                    break;
                }
            }
        }
    }
    unsubscribe(&channels, &name, rx);
}

/// One publish API request: the body goes to every subscriber of the path's channel.
async fn publish(
    req: hyper::Request<Incoming>,
    channels: Channels,
) -> Result<hyper::Response<Full<Bytes>>, hyper::Error> {
    let answer = |status: StatusCode, body: String| {
        let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        Ok(resp)
    };
    let name = match req.uri().path().strip_prefix("/publish/") {
        Some(n) if req.method() == Method::POST && !n.is_empty() => n.to_string(),
        _ => return answer(StatusCode::NOT_FOUND, String::new()),
    };
    let text = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain") || v.starts_with("application/json"));
    let body = req.into_body().collect().await?.to_bytes();
    let msg = if text {
        match Utf8Bytes::try_from(body) {
            Ok(t) => Message::Text(t),
            Err(_) => return answer(StatusCode::BAD_REQUEST, String::new()),
        }
    } else {
        Message::Binary(body)
    };
    let subscribers = {
        let map = channels.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&name).map_or(0, |tx| tx.send(msg).unwrap_or(0))
    };
    answer(
        StatusCode::OK,
        format!("{{\"channel\":\"{name}\",\"subscribers\":{subscribers}}}"),
    )
}

/// Serves the publish API on `listener`, one keep-alive HTTP/1.1 connection per task.
async fn serve_api(listener: TcpListener, channels: Channels) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let channels = Arc::clone(&channels);
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let service =
                hyper::service::service_fn(move |req| publish(req, Arc::clone(&channels)));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

/// Reports the skipped-message count on stderr whenever it has grown.
async fn report_lag() {
    let mut reported = 0;
    loop {
        tokio::time::sleep(LAG_REPORT_EVERY).await;
        let skipped = SKIPPED.load(Ordering::Relaxed);
        if skipped != reported {
            eprintln!("lagged receivers skipped {skipped} messages so far");
            reported = skipped;
        }
    }
}

fn main() {
    let (addr, api_addr) = wsd_bench_peers::listen_addrs(true);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = TcpListener::bind(addr).await.expect("bind");
        eprintln!("listening on {}", listener.local_addr().unwrap());
        tokio::spawn(report_lag());
        let channels = Channels::default();
        if let Some(api_addr) = api_addr {
            let api = TcpListener::bind(api_addr).await.expect("bind the API");
            eprintln!("publish API on {}", api.local_addr().unwrap());
            tokio::spawn(serve_api(api, Arc::clone(&channels)));
        }
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(serve(stream, Arc::clone(&channels)));
        }
    });
}
