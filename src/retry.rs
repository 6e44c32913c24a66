//! The one way the service retries and the one way it isolates a bad part of a refused batch.
//!
//! Every failure is one of two kinds ([`Transient`]): the peer is not reachable right now (the
//! same operation may succeed later: wait and try again), or it refused this input (it will
//! refuse it again: report it and go on). [`Retry::run`] retries the first kind with capped
//! exponential backoff until it succeeds, the second kind comes, or its cancellation token
//! fires; [`Retry::isolate`] writes the parts of a refused batch one at a time with the same
//! retry, so one bad part costs only itself.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::BackoffSettings;

/// Whether a failure may go away by itself.
pub trait Transient {
    /// True when the peer is unreachable or overloaded right now (retry the same operation),
    /// false when it refused this input (retrying would fail the same way).
    fn is_transient(&self) -> bool;
}

/// Why a retried operation gave up.
#[derive(Debug, thiserror::Error)]
pub enum Stop<E> {
    /// The operation failed in a way retrying cannot fix.
    #[error("{0}")]
    Refused(E),
    /// The cancellation token fired while waiting to try again.
    #[error("cancelled while retrying")]
    Cancelled,
}

/// How to retry: the backoff between attempts, and the token that ends the waiting.
#[derive(Clone, Copy)]
pub struct Retry<'a> {
    pub backoff: &'a BackoffSettings,
    pub cancel: &'a CancellationToken,
}

impl<'a> Retry<'a> {
    pub fn new(backoff: &'a BackoffSettings, cancel: &'a CancellationToken) -> Self {
        Retry { backoff, cancel }
    }

    /// Runs `attempt` until it succeeds or fails permanently, waiting out a backoff after each
    /// transient failure; `retrying` hears of each one with the delay before the next attempt
    /// (to log it, count it, mark a peer down).
    pub async fn run<T, E, Fut>(
        &self,
        mut attempt: impl FnMut() -> Fut,
        mut retrying: impl FnMut(&E, Duration),
    ) -> Result<T, Stop<E>>
    where
        E: Transient,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut backoff = Backoff::new(self.backoff);
        loop {
            match attempt().await {
                Ok(value) => return Ok(value),
                Err(e) if !e.is_transient() => return Err(Stop::Refused(e)),
                Err(e) => {
                    let delay = backoff.next_delay();
                    retrying(&e, delay);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.cancel.cancelled() => return Err(Stop::Cancelled),
                    }
                }
            }
        }
    }

    /// Writes each of `parts` parts alone, after the peer refused them together: `write(i)` is
    /// retried as [`Retry::run`] does, then `settle(i, outcome)` gets the part's outcome, the
    /// written value or the part's own refusal, in the parts' order. Err if cancelled, or with
    /// the first error `settle` returns (the remaining parts are left unsettled).
    pub async fn isolate<T, E, X, WriteFut, SettleFut>(
        &self,
        parts: usize,
        mut write: impl FnMut(usize) -> WriteFut,
        mut settle: impl FnMut(usize, Result<T, E>) -> SettleFut,
        mut retrying: impl FnMut(&E, Duration),
    ) -> Result<(), Isolation<X>>
    where
        E: Transient,
        WriteFut: Future<Output = Result<T, E>>,
        SettleFut: Future<Output = Result<(), X>>,
    {
        for i in 0..parts {
            let outcome = match self.run(|| write(i), &mut retrying).await {
                Ok(value) => Ok(value),
                Err(Stop::Refused(e)) => Err(e),
                Err(Stop::Cancelled) => return Err(Isolation::Cancelled),
            };
            settle(i, outcome).await.map_err(Isolation::Settle)?;
        }
        Ok(())
    }
}

/// Why isolating the parts of a refused batch stopped before the last part.
#[derive(Debug, thiserror::Error)]
pub enum Isolation<X> {
    #[error("cancelled while isolating a refused batch")]
    Cancelled,
    #[error("{0}")]
    Settle(X),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum Failure {
        Away,
        Bad,
    }

    impl Transient for Failure {
        fn is_transient(&self) -> bool {
            *self == Failure::Away
        }
    }

    fn fast() -> BackoffSettings {
        BackoffSettings {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(2),
        }
    }

    #[tokio::test]
    async fn transient_failures_are_retried_until_success() {
        let cancel = CancellationToken::new();
        let settings = fast();
        let mut calls = 0;
        let mut heard = 0;
        let result: Result<u32, Stop<Failure>> = Retry::new(&settings, &cancel)
            .run(
                || {
                    calls += 1;
                    let n = calls;
                    async move { if n < 4 { Err(Failure::Away) } else { Ok(n) } }
                },
                |_, _| heard += 1,
            )
            .await;
        assert_eq!(result.unwrap(), 4);
        assert_eq!(heard, 3);
    }

    #[tokio::test]
    async fn a_permanent_failure_is_returned_at_once() {
        let cancel = CancellationToken::new();
        let settings = fast();
        let mut calls = 0;
        let result: Result<(), Stop<Failure>> = Retry::new(&settings, &cancel)
            .run(
                || {
                    calls += 1;
                    async { Err(Failure::Bad) }
                },
                |_, _| {},
            )
            .await;
        assert!(matches!(result, Err(Stop::Refused(Failure::Bad))));
        assert_eq!(calls, 1);
    }

    #[tokio::test]
    async fn cancellation_ends_the_wait() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let settings = BackoffSettings {
            initial: Duration::from_secs(3600),
            max: Duration::from_secs(3600),
        };
        let result: Result<(), Stop<Failure>> = Retry::new(&settings, &cancel)
            .run(|| async { Err(Failure::Away) }, |_, _| {})
            .await;
        assert!(matches!(result, Err(Stop::Cancelled)));
    }

    #[tokio::test]
    async fn isolation_settles_every_part_in_order_with_its_own_outcome() {
        let cancel = CancellationToken::new();
        let settings = fast();
        let parts = [1, 2, 3];
        let mut away_once = true;
        let mut settled = Vec::new();
        let result: Result<(), Isolation<()>> = Retry::new(&settings, &cancel)
            .isolate(
                parts.len(),
                |i| {
                    let outcome = match parts[i] {
                        2 => Err(Failure::Bad),
                        3 if away_once => {
                            away_once = false;
                            Err(Failure::Away)
                        }
                        n => Ok(n * 10),
                    };
                    async move { outcome }
                },
                |i, outcome| {
                    settled.push((parts[i], outcome));
                    async { Ok(()) }
                },
                |_, _| {},
            )
            .await;
        assert!(result.is_ok());
        assert_eq!(
            settled,
            vec![(1, Ok(10)), (2, Err(Failure::Bad)), (3, Ok(30))]
        );
    }

    #[tokio::test]
    async fn a_failed_settlement_stops_the_isolation() {
        let cancel = CancellationToken::new();
        let settings = fast();
        let mut seen = Vec::new();
        let result: Result<(), Isolation<&str>> = Retry::new(&settings, &cancel)
            .isolate(
                3,
                |_| async { Ok::<_, Failure>(()) },
                |i, _| {
                    seen.push(i + 1);
                    async move { if i == 1 { Err("gone") } else { Ok(()) } }
                },
                |_, _| {},
            )
            .await;
        assert!(matches!(result, Err(Isolation::Settle("gone"))));
        assert_eq!(seen, vec![1, 2]);
    }
}
