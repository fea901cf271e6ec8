//! The Redis store against a real Redis server.

use super::*;

use crate::ids::now_ms;
use crate::store::Connections;
use crate::testing::{Guarded, Server};

async fn store() -> Guarded<RedisStore> {
    let server = Server::redis();
    let store = RedisStore::connect(&server.url()).await.expect("connect");
    Guarded::new(store, server)
}

crate::store_suite!(store());

#[tokio::test]
async fn ten_thousand_members_page_completely() {
    let store = store().await;
    crate::store::suite::room_members_paged(&*store, 10_000).await;
}

#[tokio::test]
async fn records_expire_in_redis_itself() {
    let store = store().await;
    let mut c = crate::store::suite::connection("ttl-user");
    c.expires_at = now_ms() + 300;
    store.add(&c).await.unwrap();
    let room = RoomName::parse("ttl-room").unwrap();
    store.join(&c.id, &room).await.unwrap();
    assert!(store.get(&c.id).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Gone from Redis, not only filtered: the key itself expired.
    let mut redis = store.redis.clone();
    let exists: bool = redis.exists(store.conn_key(&c.id)).await.unwrap();
    assert!(!exists);
    let page = store.room_members(&room, None, 10).await.unwrap();
    assert!(page.items.is_empty());
    // The read swept the dead member out of the room.
    let left: usize = redis.zcard(store.room_key(&room)).await.unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_quickly() {
    let mut server = Server::redis();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    server.stop();
    let started = std::time::Instant::now();
    let err = store.get(&ConnectionId::generate()).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    server.restart();
    // The manager reconnects by itself once Redis is back.
    let mut ok = false;
    for _ in 0..50 {
        if store.get(&ConnectionId::generate()).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the store works again after Redis restarts");
}
