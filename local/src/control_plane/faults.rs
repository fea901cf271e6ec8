//! Fault injection on `@connections` posts, as API Gateway behaves under load: a chosen
//! share of posts answered 429 `LimitExceededException` or 403 `ForbiddenException`, and
//! latency added to every post. Off unless asked for (`--fault-throttle`,
//! `--fault-forbidden`, `--fault-latency-ms`), so that users' retry code, and Herald's own
//! fan-out, meet locally what they meet on AWS.
//!
//! The faults wrap what the control plane posts through ([`FaultyGateway`]): a `POST
//! @connections/{id}` from a user's backend, and the posts of a publish made through the
//! Invoke API. A room publish is then posted member by member, as on AWS, so each post
//! can fail on its own; a post that is refused never reaches its socket, and the publish's
//! counts say so. The replies to a client's own requests, and its socket publishes, are
//! left alone, so that clients keep working while their backends meet the faults; `GET`
//! and `DELETE` too.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use herald::gateway::{ConnectionInfo, Failures, Gateway, PushError, RoomDelivery};
use herald::ids::ConnectionId;
use herald::protocol::RoomName;

/// The most latency that may be added to a post: longer than any client waits for one.
pub const MAX_FAULT_LATENCY: Duration = Duration::from_secs(30);

/// Which faults posts meet.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// The share of posts answered 429 `LimitExceededException`, 0 to 1.
    throttled: f64,
    /// The share of posts answered 403 `ForbiddenException`, 0 to 1.
    forbidden: f64,
    /// Added to every post before it is answered.
    latency: Duration,
}

/// Why faults could not be set.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FaultsError {
    /// A share outside 0 to 1.
    #[error("{name} must be a share of posts between 0 and 1, got {value}")]
    Share {
        /// The setting's flag.
        name: &'static str,
        /// What it was given.
        value: f64,
    },
    /// Shares adding up to more than every post.
    #[error(
        "--fault-throttle and --fault-forbidden add up to {0}: together they may take at \
         most every post (1)"
    )]
    Sum(f64),
    /// Latency past [`MAX_FAULT_LATENCY`].
    #[error("--fault-latency-ms may add at most {max} ms, got {0} ms", max = MAX_FAULT_LATENCY.as_millis())]
    Latency(u128),
}

impl Faults {
    /// Faults answering `throttled` and `forbidden` shares of posts and adding `latency`
    /// to each; refused when a share is outside 0 to 1, they add up past 1, or the latency
    /// is past [`MAX_FAULT_LATENCY`].
    pub fn new(throttled: f64, forbidden: f64, latency: Duration) -> Result<Self, FaultsError> {
        for (name, value) in [
            ("--fault-throttle", throttled),
            ("--fault-forbidden", forbidden),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(FaultsError::Share { name, value });
            }
        }
        if throttled + forbidden > 1.0 {
            return Err(FaultsError::Sum(throttled + forbidden));
        }
        if latency > MAX_FAULT_LATENCY {
            return Err(FaultsError::Latency(latency.as_millis()));
        }
        Ok(Self {
            throttled,
            forbidden,
            latency,
        })
    }

    /// Whether no fault is injected.
    pub fn is_off(&self) -> bool {
        self.throttled == 0.0 && self.forbidden == 0.0 && self.latency.is_zero()
    }

    /// The fault one post meets, drawn at random; `None` lets it through.
    fn draw(&self) -> Option<PushError> {
        let roll = fastrand::f64();
        if roll < self.throttled {
            Some(PushError::Throttled)
        } else if roll < self.throttled + self.forbidden {
            Some(PushError::Forbidden(herald::error::because(
                "injected by herald-local (--fault-forbidden)",
            )))
        } else {
            None
        }
    }
}

impl std::fmt::Display for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}% of posts answered 429, {}% answered 403, {} ms added to each",
            self.throttled * 100.0,
            self.forbidden * 100.0,
            self.latency.as_millis()
        )
    }
}

/// A gateway whose posts meet [`Faults`] before they reach `inner`.
pub struct FaultyGateway {
    inner: Arc<dyn Gateway>,
    faults: Faults,
}

impl FaultyGateway {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Gateway>, faults: Faults) -> Self {
        Self { inner, faults }
    }

    async fn delay(&self) {
        if !self.faults.latency.is_zero() {
            tokio::time::sleep(self.faults.latency).await;
        }
    }
}

#[async_trait]
impl Gateway for FaultyGateway {
    async fn post(&self, id: &ConnectionId, payload: Bytes) -> Result<(), PushError> {
        self.delay().await;
        match self.faults.draw() {
            Some(fault) => Err(fault),
            None => self.inner.post(id, payload).await,
        }
    }

    async fn get(&self, id: &ConnectionId) -> Result<ConnectionInfo, PushError> {
        self.inner.get(id).await
    }

    async fn delete(&self, id: &ConnectionId) -> Result<(), PushError> {
        self.inner.delete(id).await
    }

    /// With latency, posts go one by one (fan-out runs them concurrently, as the `publish`
    /// function does on AWS), each waiting its own delay.
    fn prefers_batches(&self) -> bool {
        self.faults.latency.is_zero() && self.inner.prefers_batches()
    }

    async fn post_many(&self, ids: &[ConnectionId], payload: Bytes) -> Failures {
        let mut failures = Failures::new();
        let mut through = Vec::with_capacity(ids.len());
        let mut positions = Vec::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            match self.faults.draw() {
                Some(fault) => failures.push((i, fault)),
                None => {
                    through.push(id.clone());
                    positions.push(i);
                }
            }
        }
        if !through.is_empty() {
            let failed = self.inner.post_many(&through, payload).await;
            failures.extend(failed.into_iter().map(|(j, e)| (positions[j], e)));
            failures.sort_by_key(|(i, _)| *i);
        }
        failures
    }

    /// Never: fan-out posts each member, so that each post meets its own fault.
    async fn deliver_room(&self, _room: &RoomName, _payload: &Bytes) -> Option<RoomDelivery> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_checked_at_and_past_their_bounds() {
        let none = Duration::ZERO;
        assert!(Faults::new(0.0, 0.0, none).unwrap().is_off());
        assert!(Faults::new(1.0, 0.0, none).is_ok());
        assert!(Faults::new(0.0, 1.0, none).is_ok());
        assert!(Faults::new(0.5, 0.5, none).is_ok(), "exactly every post");
        assert_eq!(
            Faults::new(1.01, 0.0, none),
            Err(FaultsError::Share {
                name: "--fault-throttle",
                value: 1.01
            })
        );
        assert!(matches!(
            Faults::new(0.0, -0.1, none),
            Err(FaultsError::Share {
                name: "--fault-forbidden",
                ..
            })
        ));
        assert!(matches!(
            Faults::new(f64::NAN, 0.0, none),
            Err(FaultsError::Share { .. })
        ));
        assert!(matches!(
            Faults::new(0.6, 0.5, none),
            Err(FaultsError::Sum(_))
        ));
        assert!(Faults::new(0.0, 0.0, MAX_FAULT_LATENCY).is_ok());
        assert!(matches!(
            Faults::new(0.0, 0.0, MAX_FAULT_LATENCY + Duration::from_millis(1)),
            Err(FaultsError::Latency(_))
        ));
        assert!(
            !Faults::new(0.0, 0.0, Duration::from_millis(1))
                .unwrap()
                .is_off()
        );
    }

    #[test]
    fn every_post_meets_a_share_of_one_and_none_meets_zero() {
        let all = Faults::new(1.0, 0.0, Duration::ZERO).unwrap();
        assert!((0..1000).all(|_| matches!(all.draw(), Some(PushError::Throttled))));
        let forbidden = Faults::new(0.0, 1.0, Duration::ZERO).unwrap();
        assert!((0..1000).all(|_| matches!(forbidden.draw(), Some(PushError::Forbidden(_)))));
        let latency_only = Faults::new(0.0, 0.0, Duration::from_millis(5)).unwrap();
        assert!((0..1000).all(|_| latency_only.draw().is_none()));
    }
}
