//! What instances say to each other over Redis pub/sub: requests for another instance's
//! sockets, and their answers, as JSON envelopes; and how an answer becomes each post's
//! outcome.

use base64::Engine;
use bytes::Bytes;
use herald::gateway::{ConnectionInfo, PushError};
use herald::ids::ConnectionId;
use serde::{Deserialize, Serialize};

/// One message on an instance's channel, or on the shared one.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(super) enum Envelope {
    /// Asks the channel's instance to do `op`, and to answer on `from`'s channel.
    Request { req: u64, from: String, op: Op },
    /// The answer to request `req`.
    Reply { req: u64, answer: Answer },
    /// An instance has started (sent on the shared channel).
    Hello { from: String },
    /// An instance found its marker gone: the store lost records, perhaps every instance's
    /// (sent on the shared channel).
    Lost { from: String },
}

/// What one instance asks of another.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(super) enum Op {
    /// Post one payload to these sockets.
    Post {
        ids: Vec<String>,
        /// The payload as text, or base64 when it is not UTF-8.
        text: Option<String>,
        b64: Option<String>,
    },
    /// Describe a socket.
    Get { id: String },
    /// Close a socket.
    Delete { id: String },
    /// Deliver one payload to this instance's members of `room`.
    Room {
        room: String,
        /// The payload as text, or base64 when it is not UTF-8.
        text: Option<String>,
        b64: Option<String>,
    },
}

/// An instance's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Answer {
    /// One outcome per id of a post, or the one outcome of a delete.
    Results(Vec<Outcome>),
    /// A socket's description, or none when it is not held there.
    Info(Option<ConnectionInfo>),
    /// What a room delivery did on the instance that answers.
    Counts {
        delivered: u64,
        gone: u64,
        failed: u64,
    },
}

/// What became of one post, as it crosses the wire.
#[derive(Debug, Serialize, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(super) enum Outcome {
    Ok,
    Gone,
    TooLarge,
    Throttled,
    Failed,
}

impl From<&PushError> for Outcome {
    fn from(error: &PushError) -> Self {
        match error {
            PushError::Gone => Self::Gone,
            PushError::PayloadTooLarge => Self::TooLarge,
            PushError::Throttled => Self::Throttled,
            PushError::Forbidden(_) | PushError::Other(_) => Self::Failed,
        }
    }
}

impl From<Outcome> for Result<(), PushError> {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Ok => Ok(()),
            Outcome::Gone => Err(PushError::Gone),
            Outcome::TooLarge => Err(PushError::PayloadTooLarge),
            Outcome::Throttled => Err(PushError::Throttled),
            Outcome::Failed => Err(PushError::other("the holding instance failed")),
        }
    }
}

impl Op {
    /// A post of `payload` to `ids`, as text when it is UTF-8 (notifications always are).
    pub(super) fn post(ids: Vec<String>, payload: &Bytes) -> Self {
        let (text, b64) = encoded(payload);
        Self::Post { ids, text, b64 }
    }

    /// A delivery of `payload` to the members of `room` on the instance asked.
    pub(super) fn room(room: String, payload: &Bytes) -> Self {
        let (text, b64) = encoded(payload);
        Self::Room { room, text, b64 }
    }
}

/// A payload as it crosses the wire: its text when it is UTF-8, else base64.
fn encoded(payload: &Bytes) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(payload) {
        Ok(text) => (Some(text.to_owned()), None),
        Err(_) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(payload)),
        ),
    }
}

/// The payload of a post, back to bytes.
pub(super) fn payload(text: Option<String>, b64: Option<String>) -> Bytes {
    match (text, b64) {
        (Some(text), _) => Bytes::from(text),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map(Bytes::from)
            .unwrap_or_default(),
        (None, None) => Bytes::new(),
    }
}

/// The outcomes of posting to `ids` on this instance, as an answer.
pub(super) fn results(count: usize, failures: Vec<(usize, PushError)>) -> Answer {
    let mut outcomes = vec![Outcome::Ok; count];
    for (i, error) in failures {
        if let Some(outcome) = outcomes.get_mut(i) {
            *outcome = Outcome::from(&error);
        }
    }
    Answer::Results(outcomes)
}

/// The failed posts among `indexes` (positions in the caller's ids, in the order the
/// request named them), given the holder's answer. An id the answer says nothing of is
/// gone: its holder no longer knows it.
pub(super) fn failures_of(
    indexes: &[usize],
    answer: &Result<Answer, PushError>,
) -> Vec<(usize, PushError)> {
    indexes
        .iter()
        .enumerate()
        .filter_map(|(n, &i)| {
            let result: Result<(), PushError> = match answer {
                Ok(Answer::Results(outcomes)) => outcomes
                    .get(n)
                    .copied()
                    .map_or(Err(PushError::Gone), Into::into),
                Ok(Answer::Info(_) | Answer::Counts { .. }) => {
                    Err(PushError::other("unexpected answer"))
                }
                Err(e) => Err(e.clone()),
            };
            result.err().map(|error| (i, error))
        })
        .collect()
}

/// The connection ids of a post, typed.
pub(super) fn ids(ids: Vec<String>) -> Vec<ConnectionId> {
    ids.into_iter().map(ConnectionId::new).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(envelope: &Envelope) -> Envelope {
        serde_json::from_slice(&serde_json::to_vec(envelope).unwrap()).unwrap()
    }

    #[test]
    fn requests_and_replies_cross_the_wire_unchanged() {
        let request = Envelope::Request {
            req: 7,
            from: "a1".into(),
            op: Op::post(
                vec!["x".into(), "y".into()],
                &Bytes::from_static(b"{\"n\":1}"),
            ),
        };
        let Envelope::Request { req, from, op } = round_trip(&request) else {
            panic!("a request");
        };
        assert_eq!((req, from.as_str()), (7, "a1"));
        let Op::Post { ids, text, b64 } = op else {
            panic!("a post");
        };
        assert_eq!(ids, ["x", "y"]);
        assert_eq!(payload(text, b64), Bytes::from_static(b"{\"n\":1}"));

        let info = ConnectionInfo {
            connected_at: 1,
            last_active_at: 2,
            source_ip: Some("127.0.0.1".into()),
            user_agent: None,
        };
        let reply = Envelope::Reply {
            req: 9,
            answer: Answer::Info(Some(info.clone())),
        };
        let Envelope::Reply {
            req: 9,
            answer: Answer::Info(Some(back)),
        } = round_trip(&reply)
        else {
            panic!("the reply");
        };
        assert_eq!(back, info);
    }

    #[test]
    fn binary_payloads_travel_as_base64() {
        let bytes = Bytes::from_static(&[0xff, 0x00, 0xfe]);
        let Op::Post { text, b64, .. } = Op::post(vec![], &bytes) else {
            panic!("a post");
        };
        assert_eq!(text, None);
        assert_eq!(payload(text, b64), bytes);
    }

    #[test]
    fn every_push_error_maps_to_an_outcome_and_back() {
        for error in [
            PushError::Gone,
            PushError::Throttled,
            PushError::PayloadTooLarge,
            PushError::other("boom"),
        ] {
            let back: Result<(), PushError> = Outcome::from(&error).into();
            let same = matches!(
                (&error, back.unwrap_err()),
                (PushError::Gone, PushError::Gone)
                    | (PushError::Throttled, PushError::Throttled)
                    | (PushError::PayloadTooLarge, PushError::PayloadTooLarge)
                    | (PushError::Other(_), PushError::Other(_))
            );
            assert!(same, "{error}");
        }
        let ok: Result<(), PushError> = Outcome::Ok.into();
        assert!(ok.is_ok());
    }

    #[test]
    fn an_answer_becomes_the_failures_at_the_callers_indexes() {
        let answer = results(3, vec![(1, PushError::Gone), (9, PushError::Throttled)]);
        let Answer::Results(outcomes) = &answer else {
            panic!("results");
        };
        assert_eq!(outcomes, &[Outcome::Ok, Outcome::Gone, Outcome::Ok]);
        // The request carried the caller's ids 4, 7 and 8; the answer names only two of them.
        let short = Answer::Results(vec![Outcome::Ok, Outcome::Throttled]);
        let failures = failures_of(&[4, 7, 8], &Ok(short));
        let at: Vec<usize> = failures.iter().map(|(i, _)| *i).collect();
        assert_eq!(at, [7, 8]);
        assert!(matches!(failures[0].1, PushError::Throttled));
        assert!(
            matches!(failures[1].1, PushError::Gone),
            "unanswered is gone"
        );

        let failed = failures_of(&[2, 3], &Err(PushError::other("timeout")));
        assert_eq!(failed.len(), 2);
        assert!(failed.iter().all(|(_, e)| matches!(e, PushError::Other(_))));
        let odd = failures_of(&[5], &Ok(Answer::Info(None)));
        assert!(matches!(odd[..], [(5, PushError::Other(_))]));
    }
}
