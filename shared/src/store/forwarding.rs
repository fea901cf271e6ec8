//! How each of the store's traits is declared: once, by [`store_trait!`], which writes the
//! trait and how a decorator forwards it, so no list of operations is written twice.
//!
//! A decorator (`herald-local`'s `TrackingStore`, a test's counting store) implements
//! [`ForwardingStore`](super::ForwardingStore), names its inner store, and overrides only
//! the connection operations it changes; every other operation, history and counters
//! included, reaches the inner store unchanged.

/// Declares one concern's trait from its list of operations, each with its doc comment.
///
/// - `overridable`: the trait, plus `ForwardingStore`, whose default methods forward each
///   operation to `inner()` (a decorator overrides some), and the trait for every
///   `ForwardingStore` through those methods.
/// - `forwarded`: the trait, and for every `ForwardingStore` each operation forwarded to
///   `inner()` as it is.
macro_rules! store_trait {
    (
        overridable
        $(#[$trait_meta:meta])*
        pub trait $name:ident {
            $(
                $(#[$meta:meta])*
                async fn $method:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty;
            )*
        }
    ) => {
        store_trait! {
            declare
            $(#[$trait_meta])*
            pub trait $name {
                $( $(#[$meta])* async fn $method(&self $(, $arg: $ty)*) -> $ret; )*
            }
        }

        /// A store that wraps another ([`ForwardingStore::inner`]) and may change some of
        #[doc = concat!("its [`", stringify!($name), "`] operations; each method means what")]
        /// the trait's method of the same name means. Everything it does not override, and
        /// every other concern, reaches the inner store unchanged.
        #[async_trait::async_trait]
        pub trait ForwardingStore: Send + Sync + 'static {
            /// The store every operation not overridden goes to.
            fn inner(&self) -> &dyn ConnectionStore;

            $(
                $(#[$meta])*
                async fn $method(&self $(, $arg: $ty)*) -> $ret {
                    $name::$method(self.inner() $(, $arg)*).await
                }
            )*
        }

        #[async_trait::async_trait]
        impl<T: ForwardingStore> $name for T {
            $(
                async fn $method(&self $(, $arg: $ty)*) -> $ret {
                    ForwardingStore::$method(self $(, $arg)*).await
                }
            )*
        }
    };
    (
        forwarded
        $(#[$trait_meta:meta])*
        pub trait $name:ident {
            $(
                $(#[$meta:meta])*
                async fn $method:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty;
            )*
        }
    ) => {
        store_trait! {
            declare
            $(#[$trait_meta])*
            pub trait $name {
                $( $(#[$meta])* async fn $method(&self $(, $arg: $ty)*) -> $ret; )*
            }
        }

        #[async_trait::async_trait]
        impl<T: ForwardingStore> $name for T {
            $(
                async fn $method(&self $(, $arg: $ty)*) -> $ret {
                    $name::$method(self.inner() $(, $arg)*).await
                }
            )*
        }
    };
    // The trait itself, as both kinds declare it.
    (
        declare
        $(#[$trait_meta:meta])*
        pub trait $name:ident {
            $( $(#[$meta:meta])* async fn $method:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty; )*
        }
    ) => {
        $(#[$trait_meta])*
        #[async_trait::async_trait]
        pub trait $name: Send + Sync + 'static {
            $(
                $(#[$meta])*
                async fn $method(&self $(, $arg: $ty)*) -> $ret;
            )*
        }
    };
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;

    use super::super::{
        Channel, ConnectionStore, Connections, Draft, ForwardingStore, History, MemoryStore, Range,
        Retention, StoreError,
    };
    use crate::ids::ConnectionId;
    use crate::protocol::RoomName;
    use crate::store::suite::connection;

    /// Counts joins and changes nothing else.
    struct CountingJoins {
        inner: MemoryStore,
        joins: AtomicUsize,
    }

    #[async_trait]
    impl ForwardingStore for CountingJoins {
        fn inner(&self) -> &dyn ConnectionStore {
            &self.inner
        }

        async fn join(&self, id: &ConnectionId, room: &RoomName) -> Result<bool, StoreError> {
            self.joins.fetch_add(1, Ordering::Relaxed);
            self.inner.join(id, room).await
        }
    }

    #[tokio::test]
    async fn an_override_runs_and_everything_else_reaches_the_inner_store() {
        let counting = CountingJoins {
            inner: MemoryStore::new(),
            joins: AtomicUsize::new(0),
        };
        let store: &dyn ConnectionStore = &counting;
        let c = connection("ann");
        store.add(&c).await.unwrap();
        let room = RoomName::parse("r").unwrap();
        store.join(&c.id, &room).await.unwrap();
        assert_eq!(store.rooms_of(&c.id).await.unwrap(), vec![room.clone()]);
        assert_eq!(store.count_user("ann").await.unwrap(), 1);
        assert_eq!(
            store.instances(std::slice::from_ref(&c.id)).await.unwrap(),
            vec![c.instance.clone()]
        );
        assert!(store.leave(&c.id, &room).await.unwrap().was_member);
        assert_eq!(
            store
                .remove(&c.id)
                .await
                .unwrap()
                .connection
                .map(|c| c.user),
            Some("ann".into())
        );
        assert_eq!(counting.joins.load(Ordering::Relaxed), 1);
        // History and counters reach the inner store too.
        let keep = Retention::new(10, std::time::Duration::from_secs(60)).unwrap();
        let channel = Channel::Room(room);
        let draft = Draft {
            head: bytes::Bytes::from_static(b"{\"type\":\"notification\",\"id\":\"n\""),
            tail: bytes::Bytes::from_static(b",\"data\":1}"),
        };
        let at = store.append(&channel, &draft, &keep).await.unwrap();
        let read = History::read_history(&counting.inner, &channel, Range::Latest, 10, &keep);
        assert_eq!(read.await.unwrap().position.offset, at.offset);
        assert!(
            store
                .count_events("k", std::time::Duration::from_secs(1), 1, 1)
                .await
                .unwrap()
        );
        assert!(
            !store
                .count_events("k", std::time::Duration::from_secs(1), 1, 1)
                .await
                .unwrap()
        );
    }
}
