//! The one error type of the storage layer.

/// Why a store operation failed. Tenancy misses are not errors (lookups return `None`), so the
/// web layer can answer 404 without guessing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or refused the operation.
    #[error("{context}")]
    Backend {
        context: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A row that should be well-formed is not (e.g. an unknown status string).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The operation conflicts with existing data (e.g. a duplicate key hash).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A bulk insert the organization's credits or spend limit do not cover; nothing was stored.
    #[error("refused: {0}")]
    Refused(crate::credits::CreditRefusal),
}

impl StoreError {
    /// Wrap a backend error with what we were doing, so the log line says why it matters.
    pub fn backend(
        context: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> StoreError {
        StoreError::Backend {
            context,
            source: Box::new(source),
        }
    }
}
