//! The one way the service retries and the one way it isolates a bad part of a refused batch.
//!
//! Every failure is one of two kinds ([`Transient`]): the peer is not reachable right now (the
//! same operation may succeed later: wait and try again), or it refused this input (it will
//! refuse it again: report it and go on). [`Retry::run`] retries the first kind with capped
//! exponential backoff until it succeeds, the second kind comes, or its cancellation token
//! fires; [`Retry::isolate`] writes the parts of a refused batch one at a time with the same
//! retry, so one bad part costs only itself.

use std::ops::Range;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::BackoffSettings;

/// Whether a socket error is TLS refusing the peer (a certificate that does not verify, a name
/// that does not match): rustls reports those as invalid data on the socket. Only the settings
/// can fix it, so it is never transient, for the database as for the broker.
pub fn tls_refused(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::InvalidData
}

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

    /// Finds the parts at fault after the peer refused `parts` parts together, by bisection:
    /// each half is written on its own (`write(range)`, retried as [`Retry::run`] does), a half
    /// refused is halved again, down to single parts. `settle(range, outcome)` gets each range
    /// written (`Ok`) and each part refused alone (`Err`, a range of one), in the parts' order,
    /// every part exactly once. One bad part in n costs about 2 log2(n) writes, not n. Err if
    /// cancelled, or with the first error `settle` returns (the remaining parts are left
    /// unsettled).
    pub async fn isolate<T, E, X, WriteFut, SettleFut>(
        &self,
        parts: usize,
        mut write: impl FnMut(Range<usize>) -> WriteFut,
        mut settle: impl FnMut(Range<usize>, Result<T, E>) -> SettleFut,
        mut retrying: impl FnMut(&E, Duration),
    ) -> Result<(), Isolation<X>>
    where
        E: Transient,
        WriteFut: Future<Output = Result<T, E>>,
        SettleFut: Future<Output = Result<(), X>>,
    {
        // Depth first, the left half on top, so that ranges settle in the parts' order. The
        // whole was refused already: it starts halved.
        let mut pending = halves(0..parts);
        while let Some(range) = pending.pop() {
            let outcome = match self.run(|| write(range.clone()), &mut retrying).await {
                Ok(value) => Ok(value),
                Err(Stop::Refused(_)) if range.len() > 1 => {
                    pending.extend(halves(range));
                    continue;
                }
                Err(Stop::Refused(e)) => Err(e),
                Err(Stop::Cancelled) => return Err(Isolation::Cancelled),
            };
            settle(range, outcome).await.map_err(Isolation::Settle)?;
        }
        Ok(())
    }
}

/// A range's two halves, the right one first (for a stack), or the range itself if it holds
/// one part (none if empty).
fn halves(range: Range<usize>) -> Vec<Range<usize>> {
    match range.len() {
        0 => Vec::new(),
        1 => vec![range],
        n => {
            let mid = range.start + n / 2;
            vec![mid..range.end, range.start..mid]
        }
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
        let parts = [1, 2, 3, 4, 5];
        let mut away_once = true;
        let mut settled = Vec::new();
        let result: Result<(), Isolation<()>> = Retry::new(&settings, &cancel)
            .isolate(
                parts.len(),
                |range| {
                    let chosen = &parts[range];
                    let outcome = if chosen.contains(&2) {
                        Err(Failure::Bad)
                    } else if chosen.contains(&4) && away_once {
                        away_once = false;
                        Err(Failure::Away)
                    } else {
                        Ok(chosen.iter().sum::<i32>())
                    };
                    async move { outcome }
                },
                |range, outcome| {
                    settled.push((parts[range].to_vec(), outcome));
                    async { Ok(()) }
                },
                |_, _| {},
            )
            .await;
        assert!(result.is_ok());
        assert_eq!(
            settled,
            vec![
                (vec![1], Ok(1)),
                (vec![2], Err(Failure::Bad)),
                (vec![3, 4, 5], Ok(12)),
            ]
        );
    }

    /// One bad part among many is found in about 2 log2(n) writes, every other part written.
    #[tokio::test]
    async fn isolation_bisects_down_to_the_parts_at_fault() {
        let cancel = CancellationToken::new();
        let settings = fast();
        let n = 2000;
        let bad = [7, 1500];
        let mut writes = 0;
        let mut written = Vec::new();
        let mut refused = Vec::new();
        let result: Result<(), Isolation<()>> = Retry::new(&settings, &cancel)
            .isolate(
                n,
                |range: Range<usize>| {
                    writes += 1;
                    let outcome = if bad.iter().any(|b| range.contains(b)) {
                        Err(Failure::Bad)
                    } else {
                        Ok(())
                    };
                    async move { outcome }
                },
                |range, outcome| {
                    match outcome {
                        Ok(()) => written.extend(range),
                        Err(_) => refused.extend(range),
                    }
                    async { Ok(()) }
                },
                |_, _| {},
            )
            .await;
        assert!(result.is_ok());
        assert_eq!(refused, bad);
        let expected: Vec<usize> = (0..n).filter(|i| !bad.contains(i)).collect();
        assert_eq!(written, expected, "every other part, in order");
        assert!(
            writes <= 4 * 11 + 2,
            "{writes} writes for two bad parts in {n}"
        );
    }

    #[tokio::test]
    async fn a_single_part_refused_is_settled_as_refused() {
        let cancel = CancellationToken::new();
        let settings = fast();
        let mut settled = Vec::new();
        let result: Result<(), Isolation<()>> = Retry::new(&settings, &cancel)
            .isolate(
                1,
                |_| async { Err::<(), _>(Failure::Bad) },
                |range, outcome| {
                    settled.push((range, outcome));
                    async { Ok(()) }
                },
                |_, _| {},
            )
            .await;
        assert!(result.is_ok());
        assert_eq!(settled, vec![(0..1, Err(Failure::Bad))]);
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
                |range, _| {
                    seen.push(range.clone());
                    async move {
                        if range.start == 1 {
                            Err("gone")
                        } else {
                            Ok(())
                        }
                    }
                },
                |_, _| {},
            )
            .await;
        assert!(matches!(result, Err(Isolation::Settle("gone"))));
        assert_eq!(seen, vec![0..1, 1..3]);
    }
}
