//! HTTP plumbing every route shares: answers in AWS's shapes, and percent-decoding of paths
//! and query strings as SDKs encode them.

pub(crate) mod answer;
pub(crate) mod query;

use tokio_util::sync::CancellationToken;

/// Drops the HTTP connection a request came on, whatever it is doing: how a reader whose
/// client stopped reading is torn down, since its stream is then never polled again.
/// `serve` puts one in every request's extensions.
#[derive(Clone, Debug, Default)]
pub(crate) struct ConnectionAbort(pub CancellationToken);
