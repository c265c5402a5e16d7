//! The one retry policy of the stores that talk to a server: throttling and unavailability
//! are retried with jittered exponential backoff (0.2 s to 10 s), never sooner than a
//! `Retry-After` asks, through each store's [`Health`]: a circuit breaker and an outage budget,
//! so a store that is gone fails the job in seconds instead of retrying every pending call.

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use reqwest::header::{HeaderMap, RETRY_AFTER};

use vss_protocol::config::Timeouts;

use crate::{ErrorKind, StoreError};

/// The longest `Retry-After` honoured; a larger one is capped.
const MAX_RETRY_AFTER_SECS: u64 = 60;

/// Consecutive connection failures (unavailable, timed out) after which a store that has been
/// failing for [`SHORT_OUTAGE`] fails fast: a blip shorter than that is retried through.
const TRIP_AFTER: u32 = 5;
/// How long a streak of failures must last before [`TRIP_AFTER`] failures open the breaker.
const SHORT_OUTAGE: Duration = Duration::from_secs(10);
/// How long an open breaker fails calls at once before it lets one through to probe the
/// store again (half-open): a store that comes back is used again, in this run or when a
/// failed job is redelivered.
const COOLDOWN: Duration = Duration::from_secs(5);

/// One store's health over a run (stores are opened once per run): a circuit breaker over
/// consecutive connection failures and an outage budget (`Timeouts::outage_secs`, counted
/// from the start of the first failed attempt of a streak). A success closes it again.
pub(crate) struct Health {
    store: String,
    outage_budget: Duration,
    failures: AtomicU32,
    since: Mutex<Option<Instant>>,
    open: Mutex<Option<(StoreError, Instant)>>,
    warned: AtomicBool,
}

impl Health {
    /// A closed breaker for the store `label`.
    pub(crate) fn new(label: &str, timeouts: &Timeouts) -> Self {
        Self {
            store: label.to_string(),
            // One request may take all of `request`: the budget never ends before it can.
            outage_budget: timeouts.outage().max(timeouts.request()),
            failures: AtomicU32::new(0),
            since: Mutex::new(None),
            open: Mutex::new(None),
            warned: AtomicBool::new(false),
        }
    }

    /// The error a call fails with at once while the breaker is open; after [`COOLDOWN`] one
    /// call goes through as a probe (the cooldown starts again, so only one does).
    fn open_error(&self) -> Option<StoreError> {
        let mut open = self.open.lock().expect("health lock");
        match open.as_mut() {
            Some((_, since)) if since.elapsed() >= COOLDOWN => {
                *since = Instant::now();
                None
            }
            Some((error, _)) => Some(error.clone()),
            None => None,
        }
    }

    /// Whether the breaker is open (without taking a probe).
    fn is_open(&self) -> bool {
        self.open.lock().expect("health lock").is_some()
    }

    /// Records the outcome of one attempt that started at `started`.
    fn observe<T>(&self, result: &Result<T, StoreError>, started: Instant) {
        let e = match result {
            Ok(_) => {
                self.failures.store(0, Ordering::Relaxed);
                *self.since.lock().expect("health lock") = None;
                *self.open.lock().expect("health lock") = None;
                return;
            }
            Err(e) if e.kind == ErrorKind::Unavailable => e,
            Err(_) => return,
        };
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(store = %self.store, error = %e, "store unreachable; retrying");
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let since = *self.since.lock().expect("health lock").get_or_insert(started);
        let down = since.elapsed();
        let mut open = self.open.lock().expect("health lock");
        if let Some((_, since)) = open.as_mut() {
            // A failed probe: the breaker stays open for another cooldown.
            *since = Instant::now();
        } else if (failures >= TRIP_AFTER && down >= SHORT_OUTAGE.min(self.outage_budget))
            || down >= self.outage_budget
        {
            tracing::warn!(
                store = %self.store,
                failures,
                down_for = ?since.elapsed(),
                "store still unreachable; failing its remaining calls at once"
            );
            let mut error = e.clone();
            error.message = format!(
                "{} (still failing after {failures} attempts in {:.0?}; the store's remaining calls were not tried)",
                e.message,
                since.elapsed()
            );
            *open = Some((error, Instant::now()));
        }
    }

    /// Runs `attempt` until it succeeds, fails permanently, `max_retries` retries are spent,
    /// or the breaker opens.
    pub(crate) async fn retry<T, F, Fut>(
        &self,
        max_retries: usize,
        mut attempt: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let guarded = || {
            let open = self.open_error();
            let call = attempt();
            async move {
                if let Some(e) = open {
                    return Err(e);
                }
                let started = Instant::now();
                let result = call.await;
                self.observe(&result, started);
                // The attempt that opened the breaker reports it as such.
                let open = self.open.lock().expect("health lock").as_ref().map(|(e, _)| e.clone());
                match (result, open) {
                    (Err(_), Some(open)) => Err(open),
                    (result, _) => result,
                }
            }
        };
        guarded
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(200))
                    .with_max_delay(Duration::from_secs(10))
                    .with_max_times(max_retries)
                    .with_jitter(),
            )
            .when(|e: &StoreError| {
                matches!(e.kind, ErrorKind::Throttled | ErrorKind::Unavailable) && !self.is_open()
            })
            // A server's Retry-After overrides a shorter backoff (a `None` still ends retrying).
            .adjust(|e: &StoreError, backoff| {
                backoff.map(|d| e.retry_after.map_or(d, |w| w.max(d)))
            })
            .await
    }
}

/// A transport error of an HTTP request, for messages: a timeout says so and how long was
/// waited; anything else without its URL (it holds secret names, and is noise).
pub(crate) fn transport_error(e: &reqwest::Error, connect: Duration, request: Duration) -> String {
    if e.is_timeout() {
        return timed_out(connect, request);
    }
    let e = e.to_string();
    e.split(" for url").next().unwrap_or(&e).to_string()
}

/// What a timed-out call says.
pub(crate) fn timed_out(connect: Duration, request: Duration) -> String {
    format!(
        "timed out (no connection within {}s, or no answer within {}s)",
        connect.as_secs(),
        request.as_secs()
    )
}

/// The wait a response's `Retry-After` header asks for (seconds form), capped.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|secs| Duration::from_secs(secs.min(MAX_RETRY_AFTER_SECS)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down() -> Result<(), StoreError> {
        Err(StoreError::new(ErrorKind::Unavailable, "s", None, "connection refused"))
    }

    #[tokio::test]
    async fn an_open_breaker_fails_fast_then_probes_and_closes() {
        let timeouts = Timeouts { connect_secs: 1, request_secs: 1, outage_secs: 1 };
        let health = Health::new("s", &timeouts);
        let calls = AtomicU32::new(0);
        let failing = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            down()
        };
        let err = health.retry(20, failing).await.unwrap_err();
        assert!(err.message.contains("still failing after"), "{err}");
        let made = calls.load(Ordering::SeqCst);
        assert!(health.retry(20, failing).await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), made, "open: no call is made");
        tokio::time::sleep(COOLDOWN).await;
        let ok = health.retry(20, || async { Ok::<_, StoreError>(7) }).await;
        assert_eq!(ok.unwrap(), 7, "after the cooldown a probe goes through, and closes it");
        assert!(!health.is_open());
    }
}
