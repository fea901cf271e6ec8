//! HTTP plumbing every route shares: answers in AWS's shapes, and percent-decoding of paths
//! and query strings as SDKs encode them.

pub(crate) mod answer;
pub(crate) mod query;
