//! The one retry policy of the HTTP-speaking stores: throttling and unavailability are retried
//! with jittered exponential backoff (0.2 s to 10 s), never sooner than a `Retry-After` asks.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::header::{HeaderMap, RETRY_AFTER};

use crate::{ErrorKind, StoreError};

/// The longest `Retry-After` honoured; a larger one is capped.
const MAX_RETRY_AFTER_SECS: u64 = 60;

/// Runs `attempt` until it succeeds, fails permanently, or `max_retries` retries are spent.
pub(crate) async fn transient<T, F, Fut>(max_retries: usize, attempt: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    attempt
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(10))
                .with_max_times(max_retries)
                .with_jitter(),
        )
        .when(|e: &StoreError| matches!(e.kind, ErrorKind::Throttled | ErrorKind::Unavailable))
        // A server's Retry-After overrides a shorter backoff (a `None` still ends retrying).
        .adjust(|e: &StoreError, backoff| backoff.map(|d| e.retry_after.map_or(d, |w| w.max(d))))
        .await
}

/// The wait a response's `Retry-After` header asks for (seconds form), capped.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|secs| Duration::from_secs(secs.min(MAX_RETRY_AFTER_SECS)))
}
