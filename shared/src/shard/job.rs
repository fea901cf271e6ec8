//! A page job: one notification for up to [`MAX_PAGE`](super::MAX_PAGE) connections, and
//! its JSON form in an SQS message body. The notification travels as the JSON it is (a raw
//! value, not a string), so it is neither escaped (which could double its size) nor parsed.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::ids::ConnectionId;

/// Post `payload` to `connections`: one page of a sharded publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageJob {
    /// The notification's id, for logs.
    pub notification: String,
    /// Which page of the publish this is, from 0.
    pub page: u64,
    /// The recipients.
    pub connections: Vec<ConnectionId>,
    /// The notification, serialized once, as clients receive it.
    pub payload: Bytes,
}

/// A message body that is not a page job.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Not JSON, or not a job's fields.
    #[error("not a page job: {0}")]
    Malformed(#[from] serde_json::Error),
    /// The job names no connection, or more than a page.
    #[error("a page job names 1 to {max} connections, this one {0}", max = super::MAX_PAGE)]
    Size(usize),
}

#[derive(Serialize, Deserialize)]
struct Wire<'a> {
    notification: &'a str,
    page: u64,
    connections: Vec<ConnectionId>,
    #[serde(borrow)]
    payload: &'a RawValue,
}

impl PageJob {
    /// The job as an SQS message body. The payload is the JSON Herald serialized; one
    /// that is not JSON (it cannot be: notifications are built here) travels as a string.
    pub fn to_json(&self) -> String {
        let text = String::from_utf8_lossy(&self.payload);
        let quoted;
        let payload = match serde_json::from_str::<&RawValue>(&text) {
            Ok(raw) => raw,
            Err(_) => {
                quoted =
                    serde_json::value::to_raw_value(&text).expect("a string serializes to JSON");
                &*quoted
            }
        };
        serde_json::to_string(&Wire {
            notification: &self.notification,
            page: self.page,
            connections: self.connections.clone(),
            payload,
        })
        .expect("a page job serializes")
    }

    /// The job in an SQS message body.
    pub fn from_json(body: &str) -> Result<Self, JobError> {
        let wire: Wire<'_> = serde_json::from_str(body)?;
        if wire.connections.is_empty() || wire.connections.len() > super::MAX_PAGE {
            return Err(JobError::Size(wire.connections.len()));
        }
        Ok(Self {
            notification: wire.notification.to_owned(),
            page: wire.page,
            connections: wire.connections,
            payload: Bytes::copy_from_slice(wire.payload.get().as_bytes()),
        })
    }

    /// About how many bytes the job holds, for queues bounded in bytes.
    pub fn weight(&self) -> usize {
        self.payload.len()
            + self.notification.len()
            + self
                .connections
                .iter()
                .map(|id| id.as_str().len() + 3)
                .sum::<usize>()
    }
}
