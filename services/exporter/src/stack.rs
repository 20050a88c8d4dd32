//! The tower stack around each sink, assembled in [`build`]: a concurrency
//! limit, then retries with exponential backoff and jitter, then a timeout per
//! try, then the sink. The limit is outermost so a request waiting to retry
//! keeps its slot: a backend that is down gets no more than `concurrency`
//! requests at a time.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use espan::redact::Redacted;
use espan::shutdown::Shutdown;
use rand::Rng;
use tower::retry::Policy;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};

use crate::metrics::SinkMetrics;
use crate::sinks::{Payload, Sent, SinkError};

/// A sink wrapped in its stack.
pub type SinkService = BoxCloneSyncService<Payload, Sent, BoxError>;

/// How the stack behaves.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// Limit on one try (connect + send + answer).
    pub timeout: Duration,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// First retry delay.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
}

/// Wraps `sink` in timeout, retry and concurrency limit. Retries go on until the
/// backend answers 2xx or refuses the data for good, or shutdown begins.
pub fn build<S>(
    name: &'static str,
    sink: S,
    config: &StackConfig,
    metrics: SinkMetrics,
    shutdown: Shutdown,
) -> SinkService
where
    S: Service<Payload, Response = Sent, Error = SinkError> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    let backoff = Backoff {
        sink: name,
        initial: config.retry_initial,
        max: config.retry_max.max(config.retry_initial),
        attempt: 0,
        metrics,
        shutdown,
    };
    let stack = ServiceBuilder::new()
        .concurrency_limit(config.concurrency.max(1))
        .retry(backoff)
        .timeout(config.timeout)
        .service(sink.map_err(BoxError::from));
    BoxCloneSyncService::new(stack)
}

/// What to do after a failed try.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Try again, after at least this long when the backend said so.
    Retry(Option<Duration>),
    /// Give up: the data is refused.
    GiveUp,
}

/// Sorts an error of the stack: a refusal is final, anything else (timeouts,
/// connection errors, 429, 5xx) is worth another try.
pub fn verdict(error: &BoxError) -> Verdict {
    match error.downcast_ref::<SinkError>() {
        Some(SinkError::Rejected { .. }) => Verdict::GiveUp,
        Some(SinkError::Retryable { retry_after, .. }) => Verdict::Retry(*retry_after),
        None => Verdict::Retry(None),
    }
}

/// Exponential backoff with equal jitter (a delay in [d/2, d], d doubling per
/// try up to `max`), raised to the backend's `Retry-After` when it sent one.
#[derive(Clone)]
pub struct Backoff {
    sink: &'static str,
    initial: Duration,
    max: Duration,
    attempt: u32,
    metrics: SinkMetrics,
    shutdown: Shutdown,
}

/// The longest `Retry-After` honoured, so a confused backend cannot stall us for days.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

impl Backoff {
    fn delay(&self, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        let low = exp / 2;
        let jittered = if exp > low {
            rand::rng().random_range(low..=exp)
        } else {
            exp
        };
        match retry_after {
            Some(after) => jittered.max(after.min(MAX_RETRY_AFTER)),
            None => jittered,
        }
    }
}

impl Policy<Payload, Sent, BoxError> for Backoff {
    type Future = Pin<Box<dyn Future<Output = ()> + Send>>;

    fn retry(
        &mut self,
        _request: &mut Payload,
        result: &mut Result<Sent, BoxError>,
    ) -> Option<Self::Future> {
        let error = result.as_ref().err()?;
        let Verdict::Retry(retry_after) = verdict(error) else {
            return None;
        };
        if self.shutdown.is_triggered() {
            // Leave the message unacked: it is redelivered after the restart.
            return None;
        }
        let delay = self.delay(retry_after);
        self.attempt = self.attempt.saturating_add(1);
        self.metrics.retried.inc();
        // One line per request at the first failure and every tenth after, so a
        // long outage does not flood the log.
        if self.attempt == 1 || self.attempt.is_multiple_of(10) {
            tracing::warn!(sink = self.sink, attempt = self.attempt, ?delay, error = %Redacted(error), "export failed; retrying");
        }
        let stop = self.shutdown.clone();
        Some(Box::pin(async move {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.wait() => {}
            }
        }))
    }

    fn clone_request(&mut self, request: &Payload) -> Option<Payload> {
        Some(request.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff(attempt: u32) -> Backoff {
        Backoff {
            sink: "test",
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            attempt,
            metrics: SinkMetrics::default(),
            shutdown: espan::shutdown::channel().1,
        }
    }

    #[test]
    fn delays_double_with_jitter_up_to_the_cap() {
        for (attempt, full) in [(0, 100), (1, 200), (3, 800), (10, 10_000), (40, 10_000)] {
            let full = Duration::from_millis(full);
            for _ in 0..50 {
                let d = backoff(attempt).delay(None);
                assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
            }
        }
        let d = backoff(0).delay(Some(Duration::from_secs(3)));
        assert_eq!(d, Duration::from_secs(3), "Retry-After raises the delay");
        let d = backoff(0).delay(Some(Duration::from_secs(100_000)));
        assert_eq!(d, MAX_RETRY_AFTER);
    }

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;

    /// A backend that answers each call from a script (then 2xx), slowly
    /// enough for calls to overlap, and records how many ran at once.
    #[derive(Clone, Default)]
    struct Scripted {
        answers: Arc<std::sync::Mutex<Vec<Result<Sent, SinkError>>>>,
        calls: Arc<AtomicUsize>,
        running: Arc<AtomicUsize>,
        most_at_once: Arc<AtomicUsize>,
        delay: Duration,
    }

    impl Service<Payload> for Scripted {
        type Response = Sent;
        type Error = SinkError;
        type Future = futures::future::BoxFuture<'static, Result<Sent, SinkError>>;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), SinkError>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Payload) -> Self::Future {
            let this = self.clone();
            Box::pin(async move {
                this.calls.fetch_add(1, Ordering::SeqCst);
                let now = this.running.fetch_add(1, Ordering::SeqCst) + 1;
                this.most_at_once.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(this.delay).await;
                this.running.fetch_sub(1, Ordering::SeqCst);
                let mut answers = this.answers.lock().unwrap();
                if answers.is_empty() {
                    Ok(Sent::default())
                } else {
                    answers.remove(0)
                }
            })
        }
    }

    fn config(concurrency: usize, timeout: Duration) -> StackConfig {
        StackConfig {
            timeout,
            concurrency,
            retry_initial: Duration::from_millis(1),
            retry_max: Duration::from_millis(4),
        }
    }

    fn payload() -> Payload {
        Payload {
            body: Bytes::from_static(b"x"),
            spans: 1,
        }
    }

    fn busy() -> Result<Sent, SinkError> {
        Err(SinkError::Retryable {
            reason: "503".into(),
            retry_after: None,
        })
    }

    #[tokio::test]
    async fn retryable_failures_are_retried_until_2xx() {
        let sink = Scripted {
            answers: Arc::new(std::sync::Mutex::new(vec![busy(), busy(), busy()])),
            ..Default::default()
        };
        let metrics = SinkMetrics::default();
        let (_trigger, shutdown) = espan::shutdown::channel();
        let service = build(
            "test",
            sink.clone(),
            &config(1, Duration::from_secs(5)),
            metrics.clone(),
            shutdown,
        );
        assert_eq!(service.oneshot(payload()).await.unwrap(), Sent::default());
        assert_eq!(sink.calls.load(Ordering::SeqCst), 4);
        assert_eq!(metrics.retried.get(), 3);
    }

    #[tokio::test]
    async fn a_refusal_is_not_retried() {
        let sink = Scripted {
            answers: Arc::new(std::sync::Mutex::new(vec![Err(SinkError::Rejected {
                reason: "400".into(),
            })])),
            ..Default::default()
        };
        let metrics = SinkMetrics::default();
        let (_trigger, shutdown) = espan::shutdown::channel();
        let service = build(
            "test",
            sink.clone(),
            &config(1, Duration::from_secs(5)),
            metrics.clone(),
            shutdown,
        );
        let error = service.oneshot(payload()).await.unwrap_err();
        assert_eq!(verdict(&error), Verdict::GiveUp);
        assert_eq!(sink.calls.load(Ordering::SeqCst), 1);
        assert_eq!(metrics.retried.get(), 0);
    }

    #[tokio::test]
    async fn a_try_that_takes_too_long_is_cut_and_retried() {
        let sink = Scripted {
            delay: Duration::from_millis(200),
            ..Default::default()
        };
        let metrics = SinkMetrics::default();
        let (trigger, shutdown) = espan::shutdown::channel();
        let service = build(
            "test",
            sink.clone(),
            &config(1, Duration::from_millis(20)),
            metrics.clone(),
            shutdown,
        );
        let call = tokio::spawn(service.oneshot(payload()));
        while metrics.retried.get() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Shutdown ends the retries; the request fails, to be redelivered.
        trigger.trigger();
        let error = call.await.unwrap().unwrap_err();
        assert!(error.is::<tower::timeout::error::Elapsed>(), "{error}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_than_concurrency_requests_are_in_flight() {
        let sink = Scripted {
            answers: Arc::new(std::sync::Mutex::new(vec![busy(); 10])),
            delay: Duration::from_millis(5),
            ..Default::default()
        };
        let (_trigger, shutdown) = espan::shutdown::channel();
        let service = build(
            "test",
            sink.clone(),
            &config(3, Duration::from_secs(5)),
            SinkMetrics::default(),
            shutdown,
        );
        let calls: Vec<_> = (0..20)
            .map(|_| tokio::spawn(service.clone().oneshot(payload())))
            .collect();
        for call in calls {
            call.await.unwrap().unwrap();
        }
        assert_eq!(
            sink.calls.load(Ordering::SeqCst),
            30,
            "20 requests, 10 retries"
        );
        assert_eq!(
            sink.most_at_once.load(Ordering::SeqCst),
            3,
            "retries keep their slot"
        );
    }

    #[test]
    fn only_refusals_are_final() {
        let rejected: BoxError = Box::new(SinkError::Rejected {
            reason: "400".into(),
        });
        assert_eq!(verdict(&rejected), Verdict::GiveUp);
        let busy: BoxError = Box::new(SinkError::Retryable {
            reason: "503".into(),
            retry_after: Some(Duration::from_secs(1)),
        });
        assert_eq!(verdict(&busy), Verdict::Retry(Some(Duration::from_secs(1))));
        let elapsed: BoxError = Box::new(tower::timeout::error::Elapsed::new());
        assert_eq!(verdict(&elapsed), Verdict::Retry(None));
    }
}
