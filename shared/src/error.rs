//! What every layer's error keeps of its cause.
//!
//! Each layer has one error enum (`StoreError`, `PushError`, …); a variant that stands for a
//! failure below Herald keeps that failure as its [`Source`], so a log or a caller walking
//! `source()` sees the backend's own error, not a sentence copied from it.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// The cause of an error, shared so the error stays `Clone` (fan-out hands one failure to
/// every recipient of a page).
pub type Source = Arc<dyn Error + Send + Sync>;

/// Keeps `error` as a cause.
pub fn source(error: impl Error + Send + Sync + 'static) -> Source {
    Arc::new(error)
}

/// A cause that is only a sentence: no error value exists below it.
pub fn because(message: impl Into<String>) -> Source {
    Arc::from(Box::<dyn Error + Send + Sync>::from(message.into()))
}

/// An error kept with the text to show for it, for errors whose own `Display` is terse (the
/// AWS SDKs print "service error" and keep the details for `DisplayErrorContext`).
#[derive(Debug)]
pub struct Described {
    text: String,
    error: Box<dyn Error + Send + Sync>,
}

impl Described {
    /// `error`, shown as `text`.
    pub fn new(text: String, error: impl Error + Send + Sync + 'static) -> Self {
        Self {
            text,
            error: Box::new(error),
        }
    }
}

impl fmt::Display for Described {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Error for Described {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_described_error_shows_its_text_and_keeps_the_error() {
        let inner = std::io::Error::new(std::io::ErrorKind::TimedOut, "inner");
        let described = Described::new("the whole story".into(), inner);
        assert_eq!(described.to_string(), "the whole story");
        let kept = described.source().unwrap();
        assert_eq!(
            kept.downcast_ref::<std::io::Error>().unwrap().kind(),
            std::io::ErrorKind::TimedOut
        );
        assert_eq!(because("plain").to_string(), "plain");
    }
}
