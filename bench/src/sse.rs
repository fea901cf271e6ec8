//! A Server-Sent Events client for the load: one HTTP/1.1 `GET /local/events` per client
//! on a plain TCP socket, its chunked body decoded here and split into events, of which
//! only each `data:` line is kept. Its read buffer is the placement's, like a WebSocket
//! client's, so the SSE figure is measured under the same range of clients.

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The read buffer when the placement names none: tokio's `BufReader` default.
const DEFAULT_READ_BUFFER: usize = 8 * 1024;

/// One open event stream.
pub struct SseClient {
    body: BufReader<TcpStream>,
    /// Decoded body bytes not yet split into lines.
    pending: Vec<u8>,
}

impl SseClient {
    /// Opens `GET /local/events?{query}` and reads the answer's head; panics unless it is
    /// a 200 stream, since a benchmark of refused clients would measure nothing.
    pub async fn open(addr: SocketAddr, query: &str) -> Self {
        let mut stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("an SSE client cannot connect to {addr}: {e}"));
        let _ = stream.set_nodelay(true);
        let request = format!(
            "GET /local/events?{query} HTTP/1.1\r\nhost: bench\r\naccept: text/event-stream\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("send");
        let capacity = crate::placement::get()
            .read_buffer
            .unwrap_or(DEFAULT_READ_BUFFER);
        let mut body = BufReader::with_capacity(capacity, stream);
        let mut line = String::new();
        body.read_line(&mut line).await.expect("a status line");
        assert!(line.starts_with("HTTP/1.1 200"), "the stream opens: {line}");
        loop {
            line.clear();
            body.read_line(&mut line).await.expect("the head");
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        Self {
            body,
            pending: Vec::new(),
        }
    }

    /// The next event's data, or `None` once the stream ends.
    pub async fn next_data(&mut self) -> Option<String> {
        loop {
            while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                if let Some(data) = line.strip_prefix(b"data: ") {
                    let data = data.strip_suffix(b"\n").unwrap_or(data);
                    return Some(String::from_utf8_lossy(data).into_owned());
                }
            }
            if !self.chunk().await {
                return None;
            }
        }
    }

    /// Reads one chunk of the chunked body into `pending`; `false` at its end.
    async fn chunk(&mut self) -> bool {
        let mut size = String::new();
        if self.body.read_line(&mut size).await.unwrap_or(0) == 0 {
            return false;
        }
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            return false;
        };
        if size == 0 {
            return false;
        }
        let start = self.pending.len();
        self.pending.resize(start + size + 2, 0);
        if self
            .body
            .read_exact(&mut self.pending[start..])
            .await
            .is_err()
        {
            return false;
        }
        // Each chunk ends with CRLF, which is not the body's.
        self.pending.truncate(start + size);
        true
    }
}
