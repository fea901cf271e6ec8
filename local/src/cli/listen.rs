//! `herald-local listen ROOM…`: prints every notification of the rooms (and the user's
//! inbox) as one JSON line each, exactly as the gateway sent it. When the connection
//! drops it reconnects with backoff and resubscribes with `since` = the last offset it
//! printed, so nothing is missed while history covers the gap; a room it cannot recover is
//! reported on stderr. Duplicates (a notification both replayed and delivered live) are
//! printed once.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::io::Write;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use herald::protocol::{ClientRequest, Position, Received, RoomName};
use tokio_tungstenite::tungstenite::{self, Message};

use super::CliError;

/// First reconnect delay; doubled after each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest wait between reconnects.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A ping this often keeps idle timeouts (API Gateway's 10 minutes) from closing the socket.
const PING_EVERY: Duration = Duration::from_secs(30);
/// Offsets remembered per channel to drop duplicates.
const SEEN_PER_CHANNEL: usize = 4096;

/// What to listen to, and where.
#[derive(Clone, Debug)]
pub struct ListenOptions {
    /// The gateway's WebSocket URL, e.g. `ws://127.0.0.1:3001/local`.
    pub url: String,
    /// The token to connect with.
    pub token: String,
    /// The rooms.
    pub rooms: Vec<String>,
    /// Stop after this many notifications.
    pub count: Option<usize>,
}

/// Where one channel (a room or the inbox) stands.
#[derive(Default)]
struct Channel {
    epoch: Option<String>,
    /// Offsets printed in this epoch (the most recent ones).
    seen: BTreeSet<u64>,
    /// The offset to resume after: the answer's, or the highest printed.
    resume: Option<u64>,
}

impl Channel {
    fn since(&self) -> Option<Position> {
        Some(Position {
            offset: self.resume?,
            epoch: self.epoch.clone()?,
        })
    }

    /// Whether a notification at `offset` in `epoch` is new (then it is remembered).
    fn take(&mut self, offset: u64, epoch: &str) -> bool {
        if self.epoch.as_deref() != Some(epoch) {
            self.epoch = Some(epoch.to_owned());
            self.seen.clear();
            self.resume = None;
        }
        if !self.seen.insert(offset) {
            return false;
        }
        if self.seen.len() > SEEN_PER_CHANNEL {
            self.seen.pop_first();
        }
        self.resume = Some(self.resume.map_or(offset, |r| r.max(offset)));
        true
    }

    /// A subscribe's or recover's answer: where to resume if nothing arrives.
    fn answered(&mut self, reply: &Received) {
        let Some(Position { offset, epoch }) = reply.position() else {
            return;
        };
        if self.epoch.as_deref() != Some(&epoch) {
            self.epoch = Some(epoch);
            self.seen.clear();
            self.resume = Some(offset);
        } else if self.resume.is_none() {
            self.resume = Some(offset);
        }
    }
}

/// Listens until `count` notifications were printed, `stop` completes, or the gateway
/// refuses the token.
pub async fn listen(
    options: &ListenOptions,
    out: &mut (dyn Write + Send),
    stop: impl Future<Output = ()>,
) -> Result<(), CliError> {
    if options.rooms.is_empty() {
        return Err(CliError::Usage("name at least one room".into()));
    }
    let rooms = options
        .rooms
        .iter()
        .map(|room| RoomName::parse(room).map_err(|e| CliError::Usage(e.message)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut channels: HashMap<String, Channel> = HashMap::new();
    let mut printed = 0usize;
    let mut backoff = FIRST_BACKOFF;
    tokio::pin!(stop);
    loop {
        let separator = if options.url.contains('?') { '&' } else { '?' };
        let url = format!("{}{separator}token={}", options.url, options.token);
        let connected = tokio::select! {
            c = tokio_tungstenite::connect_async(url.as_str()) => c,
            () = &mut stop => return Ok(()),
        };
        let mut ws = match connected {
            Ok((ws, _)) => ws,
            Err(tungstenite::Error::Http(answer))
                if matches!(answer.status().as_u16(), 401 | 403) =>
            {
                return Err(CliError::Refused(answer.status().to_string()));
            }
            Err(e) => {
                eprintln!("cannot connect ({e}); retrying in {backoff:?}");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = &mut stop => return Ok(()),
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let mut requests = Vec::new();
        for room in &rooms {
            let key = format!("room:{room}");
            let since = channels.get(&key).and_then(Channel::since);
            let subscribe = ClientRequest::Subscribe {
                room: room.clone(),
                since,
            };
            requests.push(subscribe.to_frame(Some(&key)));
        }
        let inbox = channels
            .iter()
            .find(|(k, _)| k.starts_with("user:"))
            .and_then(|(k, c)| Some((k.clone(), c.since()?)));
        if let Some((key, since)) = inbox {
            requests.push(ClientRequest::Recover { since }.to_frame(Some(&key)));
        }
        for request in requests {
            if ws.send(Message::text(request)).await.is_err() {
                break;
            }
        }
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            let frame = tokio::select! {
                frame = ws.next() => frame,
                _ = ping.tick() => {
                    let _ = ws.send(Message::text(ClientRequest::Ping.to_frame(None))).await;
                    continue;
                }
                () = &mut stop => return Ok(()),
            };
            let Some(Ok(frame)) = frame else { break };
            let Message::Text(text) = frame else { continue };
            let Ok(message) = Received::parse(&text) else {
                continue;
            };
            match message.kind.as_str() {
                "notification" => {
                    if let Some(key) = message.channel_key() {
                        let channel = channels.entry(key).or_default();
                        if let Some(Position { offset, epoch }) = message.position()
                            && !channel.take(offset, &epoch)
                        {
                            continue;
                        }
                    }
                    writeln!(out, "{text}")?;
                    out.flush()?;
                    printed += 1;
                    if options.count.is_some_and(|n| printed >= n) {
                        return Ok(());
                    }
                }
                "subscribed" | "recovered" => {
                    backoff = FIRST_BACKOFF;
                    let key = match &message.reference {
                        Some(serde_json::Value::String(key)) => key.clone(),
                        _ => String::new(),
                    };
                    if message.recovered == Some(false) {
                        eprintln!("{key}: the missed notifications are no longer kept");
                    }
                    // On stderr, so that stdout stays JSON lines: from here on nothing is missed.
                    eprintln!("subscribed: {key}");
                    channels.entry(key).or_default().answered(&message);
                }
                "error" => eprintln!("error: {text}"),
                _ => {}
            }
        }
        eprintln!("disconnected; reconnecting in {backoff:?}");
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = &mut stop => return Ok(()),
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
