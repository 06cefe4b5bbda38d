//! The error an asset returns.
//!
//! An asset returns [`Result<T>`]: any error converts into an [`AssetError`] with
//! `?`, and is retried under the asset's retry policy unless it was marked with
//! [`AssetError::fatal`] (or [`ResultExt::fatal`]) as not worth retrying.

use std::fmt;

/// Why an asset did not produce its value.
pub struct AssetError {
    inner: anyhow::Error,
    retryable: bool,
}

/// The result of an asset function.
pub type Result<T, E = AssetError> = std::result::Result<T, E>;

impl AssetError {
    /// An error that the retry policy may retry.
    pub fn new(err: impl Into<anyhow::Error>) -> Self {
        AssetError {
            inner: err.into(),
            retryable: true,
        }
    }

    /// An error from a message.
    pub fn msg(message: impl fmt::Display + fmt::Debug + Send + Sync + 'static) -> Self {
        AssetError::new(anyhow::Error::msg(message))
    }

    /// An error that retrying will not fix (bad input data, a missing file):
    /// the step fails at once, whatever the retry policy.
    pub fn fatal(err: impl Into<anyhow::Error>) -> Self {
        AssetError {
            inner: err.into(),
            retryable: false,
        }
    }

    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// Adds context, as `anyhow::Context` does.
    pub fn context(self, context: impl fmt::Display + Send + Sync + 'static) -> Self {
        AssetError {
            inner: self.inner.context(context),
            retryable: self.retryable,
        }
    }

    pub fn into_anyhow(self) -> anyhow::Error {
        self.inner
    }
}

impl<E: Into<anyhow::Error>> From<E> for AssetError {
    fn from(err: E) -> Self {
        AssetError::new(err)
    }
}

impl fmt::Display for AssetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `{:#}` prints the whole chain of causes on one line.
        write!(f, "{:#}", self.inner)
    }
}

impl fmt::Debug for AssetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssetError")
            .field("error", &format_args!("{:#}", self.inner))
            .field("retryable", &self.retryable)
            .finish()
    }
}

/// Marks errors of a `Result` as not retryable.
pub trait ResultExt<T> {
    fn fatal(self) -> Result<T>;
}

impl<T, E: Into<anyhow::Error>> ResultExt<T> for std::result::Result<T, E> {
    fn fatal(self) -> Result<T> {
        self.map_err(AssetError::fatal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<u32> {
        Ok(s.parse::<u32>()?)
    }

    #[test]
    fn errors_convert_and_keep_their_retry_flag() {
        let err = parse("x").unwrap_err();
        assert!(err.is_retryable());
        assert!(err.to_string().contains("invalid digit"));
        let err = "x".parse::<u32>().fatal().unwrap_err();
        assert!(!err.is_retryable());
        let err = AssetError::msg("boom").context("loading day");
        assert_eq!(err.to_string(), "loading day: boom");
    }
}
