//! Timing the drains: a drain's events, seconds and progress series, the sampler behind the
//! series, and the clock that times the bench's own consumers with the CPU over them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::SAMPLE;
use crate::cpu::{CpuShares, MachineTicks, Snapshot, cpu_snapshot, machine_ticks};

/// Cumulative counts over time: (seconds since the phase started, count).
pub type Samples = Vec<(f64, u64)>;

/// A drain: how many events, in how long, and its progress every `SAMPLE`.
pub struct Drain {
    pub events: usize,
    pub seconds: f64,
    pub samples: Samples,
}

impl Drain {
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.seconds.max(1e-9)
    }
}

/// Samples an atomic counter every `SAMPLE` until the token is cancelled.
pub fn sample_counter(
    counter: Arc<AtomicU64>,
    started: Instant,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Samples> {
    tokio::spawn(async move {
        let mut out = vec![(0.0, 0)];
        let mut tick = tokio::time::interval(SAMPLE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => {
                    out.push((started.elapsed().as_secs_f64(), counter.load(Ordering::Relaxed)));
                    return out;
                }
            }
            out.push((
                started.elapsed().as_secs_f64(),
                counter.load(Ordering::Relaxed),
            ));
        }
    })
}

/// Times a drain by one of the bench's own consumers: the wall time, the CPU of every process
/// over it, and the consumer's progress counter every `SAMPLE`.
pub struct DrainClock {
    counter: Arc<AtomicU64>,
    cpu_before: (Snapshot, MachineTicks),
    started: Instant,
    stop: CancellationToken,
    sampler: tokio::task::JoinHandle<Samples>,
}

impl DrainClock {
    pub fn start() -> DrainClock {
        let counter = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let cpu_before = (cpu_snapshot(), machine_ticks());
        let started = Instant::now();
        let sampler = sample_counter(counter.clone(), started, stop.clone());
        DrainClock {
            counter,
            cpu_before,
            started,
            stop,
            sampler,
        }
    }

    /// The consumer's progress, in events.
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.counter.clone()
    }

    /// Stops the clock now: the drain of `events`, and the CPU shares over it.
    pub async fn stop(self, events: usize) -> anyhow::Result<(Drain, CpuShares)> {
        let elapsed = self.started.elapsed();
        let cpu = CpuShares::between(
            &self.cpu_before.0,
            &cpu_snapshot(),
            (self.cpu_before.1, machine_ticks()),
            elapsed,
            0,
        );
        self.stop.cancel();
        let samples = self.sampler.await?;
        let drain = Drain {
            events,
            seconds: elapsed.as_secs_f64(),
            samples,
        };
        Ok((drain, cpu))
    }
}

/// Rates (per second) over a trailing window of `window` seconds.
pub fn rate_series(points: &[(f64, u64)], window: f64) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(points.len());
    let mut j = 0;
    for i in 0..points.len() {
        while j < i && points[i].0 - points[j].0 > window + 1e-6 {
            j += 1;
        }
        let dt = points[i].0 - points[j].0;
        let rate = if i == j || dt <= 0.0 {
            0.0
        } else {
            points[i].1.saturating_sub(points[j].1) as f64 / dt
        };
        out.push((points[i].0, rate));
    }
    out
}
