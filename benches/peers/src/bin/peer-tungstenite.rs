//! tokio-tungstenite echo server on a current_thread runtime: one of wsd's comparison peers.

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

async fn serve(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let config = WebSocketConfig::default().max_message_size(Some(64 << 20));
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    while let Some(Ok(msg)) = ws.next().await {
        let echo = match msg {
            Message::Text(_) | Message::Binary(_) => ws.send(msg).await,
            Message::Close(_) => return,
            _ => Ok(()),
        };
        if echo.is_err() {
            return;
        }
    }
}

fn main() {
    let addr = wsd_bench_peers::listen_addr();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = TcpListener::bind(addr).await.expect("bind");
        eprintln!("listening on {}", listener.local_addr().unwrap());
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(serve(stream));
        }
    });
}
