//! The WebSocket upgrade itself, spoken byte by byte: requests that are not upgrades are
//! refused with the status that says why, and a client that sends its first frame in the
//! same packet as its handshake loses nothing.

use crate::common;

use common::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `request` (and whatever follows it) on a fresh connection; returns the status
/// line, the headers in lower case, and the bytes read after them.
async fn exchange(gw: &Gateway, bytes: &[u8]) -> (String, String, Vec<u8>) {
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut read = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(at) = read.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "closed before the response: {:?}",
            String::from_utf8_lossy(&read)
        );
        read.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(read[..end].to_vec()).unwrap();
    let (status, headers) = head.split_once("\r\n").unwrap();
    let mut rest = read[end..].to_vec();
    if status.contains(" 101 ") {
        // Read one server frame (unmasked; the reply is short enough for a 16-bit length).
        while rest.len() < 4 {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            rest.extend_from_slice(&chunk[..n]);
        }
        let (len, start) = match rest[1] {
            126 => (usize::from(u16::from_be_bytes([rest[2], rest[3]])), 4),
            n => (usize::from(n), 2),
        };
        while rest.len() < start + len {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            rest.extend_from_slice(&chunk[..n]);
        }
        rest = rest[start..start + len].to_vec();
    }
    (status.to_owned(), headers.to_ascii_lowercase(), rest)
}

fn request(gw: &Gateway, upgrade: &str) -> String {
    let token = gw.token("carol", &[], &[]);
    format!(
        "GET /local?token={token} HTTP/1.1\r\nhost: {}\r\n{upgrade}\r\n",
        gw.addr
    )
}

/// A client-to-server text frame: masked, as RFC 6455 requires of clients.
fn masked_text(text: &str) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let len = u8::try_from(text.len()).expect("a short frame");
    assert!(len < 126);
    let mut frame = vec![0x81, 0x80 | len];
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

#[tokio::test]
async fn a_request_without_upgrade_headers_is_426() {
    let gw = Gateway::start().await;
    let (status, headers, _) = exchange(&gw, request(&gw, "").as_bytes()).await;
    assert!(status.contains(" 426 "), "{status}");
    assert!(headers.contains("upgrade: websocket"), "{headers}");
}

#[tokio::test]
async fn an_unsupported_websocket_version_is_400_naming_13() {
    let gw = Gateway::start().await;
    let upgrade = "connection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 8\r\n\
                   sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let (status, headers, _) = exchange(&gw, request(&gw, upgrade).as_bytes()).await;
    assert!(status.contains(" 400 "), "{status}");
    assert!(headers.contains("sec-websocket-version: 13"), "{headers}");
}

#[tokio::test]
async fn a_frame_sent_with_the_handshake_is_answered() {
    let gw = Gateway::start().await;
    let upgrade = "connection: keep-alive, Upgrade\r\nupgrade: websocket\r\n\
                   sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let mut bytes = request(&gw, upgrade).into_bytes();
    bytes.extend(masked_text(r#"{"action":"whoami"}"#));
    // Were the early bytes dropped, the reply would never come.
    let (status, headers, reply) =
        tokio::time::timeout(std::time::Duration::from_secs(5), exchange(&gw, &bytes))
            .await
            .expect("the frame sent with the handshake is answered");
    assert!(status.contains(" 101 "), "{status}");
    // RFC 6455's own example key and accept value.
    assert!(
        headers.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{headers}"
    );
    let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(reply["user"], "carol", "{reply}");
}
