//! History on Redis: a stream per channel, and a hash with its counter and epoch.
//!
//! | key | type | what |
//! |---|---|---|
//! | `hist:{CHANNEL}` | stream | the kept notifications, fields `o` (offset) and `n` (bytes); capped with `MAXLEN`, trimmed by time with `MINID`; expires when nothing is appended for the retention's age |
//! | `hist:{CHANNEL}:pos` | hash | `offset` (the last one assigned) and `epoch`; expires one lifetime after the last append (one only read, after the age) |
//!
//! `CHANNEL` is `room:NAME` or `user:NAME`. An append is one script: the counter's
//! `HINCRBY`, the entry's `XADD` with the offset and epoch written into its bytes, and the
//! trims; so offsets are dense under any number of publishers and the stream holds them in
//! order. Stream ids are Redis's own time-based ones, which is what lets `MINID` trim by
//! age. When the hash is lost (`FLUSHALL`, a restart without persistence) the next append
//! or read creates it again at 0 under a new epoch.

use async_trait::async_trait;
use bytes::Bytes;
use redis::Script;

use super::RedisStore;
use crate::store::history::{self, Channel, Draft, Entry, HistoryRead, Position, Range, Retention};
use crate::store::{History, StoreError};

/// Scripts of this file, loaded once.
struct Scripts {
    append: Script,
    read: Script,
}

fn scripts() -> &'static Scripts {
    static SCRIPTS: std::sync::OnceLock<Scripts> = std::sync::OnceLock::new();
    SCRIPTS.get_or_init(|| Scripts {
        // KEYS: position hash, stream. ARGV: epoch if new, lifetime ms, size, age ms,
        // head, tail. Returns {offset, epoch}. The bytes are assembled as
        // `Draft::assemble` does.
        append: Script::new(
            r#"
            redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1])
            local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
            local epoch = redis.call('HGET', KEYS[1], 'epoch')
            redis.call('PEXPIRE', KEYS[1], ARGV[2])
            local text = string.format('%d', offset)
            local bytes = ARGV[5] .. ',"offset":' .. text .. ',"epoch":"' .. epoch .. '"' .. ARGV[6]
            redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], '*', 'o', text, 'n', bytes)
            local now = redis.call('TIME')
            local oldest = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[4])
            redis.call('XTRIM', KEYS[2], 'MINID', string.format('%d', oldest))
            redis.call('PEXPIRE', KEYS[2], ARGV[4])
            return {text, epoch}
            "#,
        ),
        // KEYS: position hash, stream. ARGV: epoch if new, age ms, how many of the newest
        // entries to return. A position created here lives `age` unless an append follows. Returns {offset, epoch, o1, n1, o2, n2, …}, newest
        // first.
        read: Script::new(
            r#"
            if redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1]) == 1 then
              redis.call('HSETNX', KEYS[1], 'offset', 0)
              redis.call('PEXPIRE', KEYS[1], ARGV[2])
            end
            local out = {redis.call('HGET', KEYS[1], 'offset') or '0', redis.call('HGET', KEYS[1], 'epoch')}
            local now = redis.call('TIME')
            local oldest = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[2])
            redis.call('XTRIM', KEYS[2], 'MINID', string.format('%d', oldest))
            local count = tonumber(ARGV[3])
            if count > 0 then
              for _, entry in ipairs(redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', count)) do
                local fields = entry[2]
                local offset, bytes
                for i = 1, #fields, 2 do
                  if fields[i] == 'o' then offset = fields[i + 1] end
                  if fields[i] == 'n' then bytes = fields[i + 1] end
                end
                out[#out + 1] = offset
                out[#out + 1] = bytes
              end
            end
            return out
            "#,
        ),
    })
}

impl RedisStore {
    pub(super) fn history_keys(&self, channel: &Channel) -> (String, String) {
        let stream = format!("{}hist:{{{}}}", self.prefix, channel.key());
        (format!("{stream}:pos"), stream)
    }
}

#[async_trait]
impl History for RedisStore {
    async fn append(
        &self,
        channel: &Channel,
        draft: &Draft,
        retention: &Retention,
    ) -> Result<Position, StoreError> {
        let (position, stream) = self.history_keys(channel);
        let mut redis = self.redis.clone();
        let (offset, epoch): (String, String) = scripts()
            .append
            .key(position)
            .key(stream)
            .arg(history::new_epoch())
            .arg(retention.lifetime_ms())
            .arg(retention.size)
            .arg(retention.age_ms())
            .arg(draft.head.as_ref())
            .arg(draft.tail.as_ref())
            .invoke_async(&mut redis)
            .await?;
        Ok(Position {
            offset: parse_offset(&offset)?,
            epoch,
        })
    }

    async fn read_history(
        &self,
        channel: &Channel,
        range: Range,
        limit: usize,
        retention: &Retention,
    ) -> Result<HistoryRead, StoreError> {
        let (position, stream) = self.history_keys(channel);
        let mut redis = self.redis.clone();
        // The stream holds consecutive offsets ending at the counter, so the entries after
        // an offset are the newest (counter − offset) ones; the script cannot know the
        // counter before it reads it, so ask for all that may be kept.
        let newest = match range {
            Range::After(_) => retention.size,
            Range::Latest => limit.min(retention.size),
        };
        let reply: Vec<Vec<u8>> = scripts()
            .read
            .key(position)
            .key(stream)
            .arg(history::new_epoch())
            .arg(retention.age_ms())
            .arg(newest)
            .invoke_async(&mut redis)
            .await?;
        let mut reply = reply.into_iter();
        let (Some(offset), Some(epoch)) = (reply.next(), reply.next()) else {
            return Err(malformed("a history read without a position"));
        };
        let position = Position {
            offset: parse_offset(&String::from_utf8_lossy(&offset))?,
            epoch: String::from_utf8(epoch).map_err(|_| malformed("an epoch that is not text"))?,
        };
        let mut entries = Vec::new();
        while let (Some(offset), Some(bytes)) = (reply.next(), reply.next()) {
            let offset = parse_offset(&String::from_utf8_lossy(&offset))?;
            if let Range::After(after) = range
                && offset <= after
            {
                break;
            }
            entries.push(Entry {
                offset,
                bytes: Bytes::from(bytes),
            });
        }
        entries.reverse();
        entries.truncate(limit);
        Ok(HistoryRead { position, entries })
    }
}

fn parse_offset(text: &str) -> Result<u64, StoreError> {
    text.parse()
        .map_err(|_| malformed(&format!("offset {text:?} is not a number")))
}

fn malformed(what: &str) -> StoreError {
    history::malformed(super::BACKEND, what)
}
