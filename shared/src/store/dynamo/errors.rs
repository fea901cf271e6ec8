//! DynamoDB's errors as [`StoreError`]s, each keeping the SDK's error as its source.

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::error::{self, Described};
use crate::store::StoreError;

/// The backend's name in errors.
pub(super) const BACKEND: &str = "dynamodb";

/// The error codes DynamoDB throttles with.
const THROTTLED: [&str; 3] = [
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
];

/// The code of a failed condition.
const CONDITION_FAILED: &str = "ConditionalCheckFailedException";

/// Maps an SDK error: throttling, unreachable endpoints and timeouts each have their kind.
pub(super) fn store_error<E, R>(error: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let unreachable = matches!(
        error,
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_)
    );
    let throttled = error.code().is_some_and(|code| THROTTLED.contains(&code));
    let text = DisplayErrorContext(&error).to_string();
    let source = error::source(Described::new(text, error));
    if unreachable {
        StoreError::Unavailable {
            backend: BACKEND,
            source,
        }
    } else if throttled {
        StoreError::Throttled {
            backend: BACKEND,
            source,
        }
    } else {
        StoreError::Backend {
            backend: BACKEND,
            source,
        }
    }
}

/// A request the SDK could not even build (a missing required field).
pub(super) fn build_error(e: aws_sdk_dynamodb::error::BuildError) -> StoreError {
    StoreError::Backend {
        backend: BACKEND,
        source: error::source(e),
    }
}

/// Splits a conditional write's answer: `Ok(Some)` written, `Ok(None)` its condition did not
/// hold, `Err` any other failure. One place for the check every conditional write needs.
pub(super) fn unless_condition_failed<T, E, R>(
    result: Result<T, SdkError<E, R>>,
) -> Result<Option<T>, StoreError>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match result {
        Ok(written) => Ok(Some(written)),
        Err(e) if e.code() == Some(CONDITION_FAILED) => Ok(None),
        Err(e) => Err(store_error(e)),
    }
}
