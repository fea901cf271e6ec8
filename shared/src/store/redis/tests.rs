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

/// The same store on a 3-master Redis Cluster: every script and pipeline must touch one
/// slot, or the cluster refuses it (`CROSSSLOT`).
mod cluster {
    use super::*;
    use crate::store::{RedisLink, RedisNodes, RedisSettings};
    use crate::testing::RedisCluster;
    use redis::ProtocolVersion;

    async fn store() -> Guarded<RedisStore> {
        let cluster = RedisCluster::start();
        let settings = RedisSettings::on(RedisNodes::Cluster(cluster.urls()));
        let store = RedisStore::open(&settings).await.expect("connect");
        Guarded::new(store, cluster)
    }

    crate::store_suite!(store());

    #[tokio::test]
    async fn a_rooms_members_are_spread_over_every_master_and_page_completely() {
        let store = store().await;
        crate::store::suite::room_members_paged(&*store, 2_000).await;
    }

    #[tokio::test]
    async fn slots_and_masters_are_those_the_cluster_reports() {
        let cluster = RedisCluster::start();
        let link = RedisLink::open(
            &RedisNodes::Cluster(cluster.urls()),
            ProtocolVersion::RESP2,
            None,
        )
        .await
        .unwrap();
        let masters = link.master_slots().await.unwrap();
        assert_eq!(
            masters.len(),
            crate::testing::CLUSTER_MASTERS,
            "{masters:?}"
        );
        for key in [
            "herald:conn:{abc}",
            "herald:all",
            "herald:hist:{room:orders}:pos",
            "x",
        ] {
            let slot: u16 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(key)
                .query_async(&mut link.clone())
                .await
                .unwrap();
            assert_eq!(crate::store::slot_of(key), slot, "{key}");
        }
        // One key placed on each master's slot, by the tag chosen for it.
        for slot in masters {
            let key = format!("m:{{{}}}", crate::store::tag_in_slot(slot));
            let found: u16 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(&key)
                .query_async(&mut link.clone())
                .await
                .unwrap();
            assert_eq!(found, slot);
        }
    }

    #[tokio::test]
    async fn a_master_killed_is_unavailable_and_its_slots_serve_again_after_restart() {
        let mut cluster = RedisCluster::start();
        let settings = RedisSettings::on(RedisNodes::Cluster(cluster.urls()));
        let store = RedisStore::open(&settings).await.expect("connect");
        let c = crate::store::suite::connection("kill-user");
        store.add(&c).await.unwrap();
        for i in 0..crate::testing::CLUSTER_MASTERS {
            cluster.stop(i);
            // Every record lives on some master; with one down the cluster refuses (or
            // cannot reach) that master's slots, and says so: never an empty answer.
            let mut refused = false;
            for _ in 0..50 {
                match store.get(&c.id).await {
                    Err(StoreError::Unavailable { .. }) => {
                        refused = true;
                        break;
                    }
                    Err(e) => panic!("expected Unavailable, got {e}"),
                    Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
            assert!(refused, "a cluster with master {i} down still answered");
            cluster.restart(i);
            // Until the nodes agree again a command may still be refused (a redirection
            // the client could not follow yet answers Unavailable); then reads and writes,
            // which touch other masters' slots too, both work.
            let mut ok = false;
            for _ in 0..100 {
                if store.get(&c.id).await.is_ok() && store.add(&c).await.is_ok() {
                    ok = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(ok, "the store works again once master {i} is back");
            assert!(store.get(&c.id).await.unwrap().is_some());
        }
    }
}
