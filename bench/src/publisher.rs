//! The publisher of a fan-out run, and the hand-written HTTP/1.1 it speaks: the gateway's
//! Invoke API and the seed's `POST /publish` over one kept-alive connection each, or the
//! baseline's publishing WebSocket.

use std::net::SocketAddr;

use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::server::{Server, Ws, now_us};

/// Publishes one payload and waits for the server's acknowledgement.
pub(crate) enum Publisher {
    /// The Invoke API over one kept-alive HTTP/1.1 connection, written by hand so the
    /// publisher's own cost (signing, pooling) does not count against the gateway: the
    /// gateway accepts any signature, and the tests use the real SDK client.
    Gateway(tokio::io::BufReader<tokio::net::TcpStream>),
    Baseline(Box<Ws>),
    /// The seed's `POST /publish`, over one kept-alive connection.
    Seed(tokio::io::BufReader<tokio::net::TcpStream>),
}

/// An HTTP/1.1 answer read off a kept-alive connection.
pub(crate) struct HttpAnswer {
    /// Its status code.
    pub status: u16,
    /// Whether it carries `X-Amz-Function-Error`.
    pub function_error: bool,
    /// Its body.
    pub body: Vec<u8>,
}

/// Reads one answer (status line, headers, a body of `content-length` bytes).
pub(crate) async fn read_answer(
    http: &mut tokio::io::BufReader<tokio::net::TcpStream>,
) -> HttpAnswer {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut line = String::new();
    http.read_line(&mut line).await.expect("the status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP status line, not {line:?}"));
    let (mut length, mut function_error) = (0usize, false);
    loop {
        line.clear();
        http.read_line(&mut line).await.expect("the answer is read");
        let header = line.trim_end().to_ascii_lowercase();
        if header.is_empty() {
            break;
        }
        if let Some(n) = header.strip_prefix("content-length:") {
            length = n.trim().parse().expect("a content length");
        }
        function_error |= header.starts_with("x-amz-function-error");
    }
    let mut body = vec![0; length];
    http.read_exact(&mut body).await.expect("the answer's body");
    HttpAnswer {
        status,
        function_error,
        body,
    }
}

/// A kept-alive HTTP/1.1 connection to the gateway's Invoke API, without Nagle's delay.
pub(crate) async fn http_connection(
    addr: SocketAddr,
) -> tokio::io::BufReader<tokio::net::TcpStream> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _ = stream.set_nodelay(true);
    tokio::io::BufReader::new(stream)
}

/// The gateway's Invoke API path for the `publish` function.
pub(crate) const INVOKE_PATH: &str = "/2015-03-31/functions/publish/invocations";

/// Sends one Invoke request and reads the answer; panics on a function error.
async fn invoke(http: &mut tokio::io::BufReader<tokio::net::TcpStream>, body: &str) {
    post(http, INVOKE_PATH, body).await;
}

/// POSTs `body` (JSON) to `path` over the kept-alive connection and reads the answer; an
/// error only when the request could not be written.
pub(crate) async fn exchange(
    http: &mut tokio::io::BufReader<tokio::net::TcpStream>,
    path: &str,
    body: &str,
) -> std::io::Result<HttpAnswer> {
    use tokio::io::AsyncWriteExt;
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: bench\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    http.get_mut().write_all(request.as_bytes()).await?;
    Ok(read_answer(http).await)
}

/// POSTs `body` to `path` and reads the answer; panics on a function error or a non-200.
async fn post(http: &mut tokio::io::BufReader<tokio::net::TcpStream>, path: &str, body: &str) {
    let answer = exchange(http, path, body)
        .await
        .expect("the request is sent");
    assert!(
        !answer.function_error && answer.status == 200,
        "publish failed ({}): {}",
        answer.status,
        String::from_utf8_lossy(&answer.body)
    );
}

impl Publisher {
    /// A publisher to `server`: its Invoke API, `/publish` or publishing socket.
    pub(crate) async fn open(server: &Server) -> Self {
        match server {
            Server::Gateway(addrs) => Self::Gateway(http_connection(addrs[0]).await),
            Server::Seed(addrs) => Self::Seed(http_connection(addrs[0]).await),
            Server::Baseline(addr) | Server::Ring(addr) => {
                let path = if matches!(server, Server::Ring(_)) {
                    "ring-pub"
                } else {
                    "pub"
                };
                let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/{path}"))
                    .await
                    .expect("the publisher connects");
                Self::Baseline(Box::new(ws))
            }
        }
    }

    /// Publishes sequence number `seq` (stamped with the time) and waits for the answer.
    pub(crate) async fn publish(&mut self, room: &str, seq: usize, pad: &str) {
        let stamp = json!({"seq": seq, "sent": now_us(), "pad": pad});
        match self {
            Self::Gateway(http) => {
                invoke(http, &json!({"room": room, "data": stamp}).to_string()).await;
            }
            Self::Seed(http) => post(http, "/publish", &stamp.to_string()).await,
            Self::Baseline(ws) => {
                ws.send(Message::text(stamp.to_string()))
                    .await
                    .expect("publish");
                ws.next().await.expect("an ack").expect("a frame");
            }
        }
    }
}
