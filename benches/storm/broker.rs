//! Phase 1, the broker drain: the storm's backlog drained by a consumer that does nothing but
//! ack, the broker's limit on this machine.

use std::sync::atomic::Ordering;

use anyhow::Context;
use futures_util::StreamExt;
use lapin::options::BasicAckOptions;

use crate::Storm;
use crate::clock::{Drain, DrainClock};
use crate::cpu::CpuShares;
use crate::env::{Env, bench_consumer, publish_backlog};

/// One broker drain: the drain, the rate its backlog was published at, the CPU over it.
pub struct BrokerDrain {
    pub drain: Drain,
    pub publish_rate: f64,
    pub cpu: CpuShares,
}

/// The broker's limit: the backlog drained by a consumer that does nothing. `run` tells the
/// runs apart (the bench drains the broker before and after the service).
pub async fn broker_drain(env: &mut Env, storm: &Storm, run: u32) -> anyhow::Result<BrokerDrain> {
    let label = format!("broker drain {run}");
    let exchange = env.name(&format!("raw{run}"));
    let queue = env.name(&format!("raw{run}.queue"));
    env.declare(&exchange, &queue).await?;
    progress!(
        "{label}: publishing the backlog ({} messages) into {queue}",
        storm.main.len()
    );
    let publish_rate = publish_backlog(&exchange, &storm.main, &format!("{label} backlog")).await?;

    let total = storm.main.len() as u64;
    let (conn, mut consumer) = bench_consumer(&queue, "cdr-bench-drain").await?;
    let clock = DrainClock::start();
    let counter = clock.counter();
    let mut n = 0u64;
    let mut pending_ack: Option<tokio::task::JoinHandle<Result<bool, lapin::Error>>> = None;
    while n < total {
        let delivery = consumer
            .next()
            .await
            .context("the consumer ended early")??;
        n += 1;
        counter.store(n, Ordering::Relaxed);
        // Acks as the service does: `multiple`, well inside the prefetch window, without
        // waiting for lapin to write the frame before taking the next delivery (the previous
        // ack is settled first, so that acks leave in order).
        if n.is_multiple_of(500) || n == total {
            if let Some(previous) = pending_ack.take() {
                previous.await??;
            }
            let acker = delivery.acker.clone();
            pending_ack = Some(tokio::spawn(async move {
                acker.ack(BasicAckOptions { multiple: true }).await
            }));
        }
    }
    if let Some(last) = pending_ack.take() {
        last.await??;
    }
    let (drain, cpu) = clock.stop(total as usize).await?;
    let _ = conn.close(200, "bye".into()).await;
    env.delete_queue(&queue).await;
    progress!(
        "{label}: {} messages consumed and acked in {:.2}s: {:.0} events/s; cpu {}, {:.0}% stolen",
        drain.events,
        drain.seconds,
        drain.rate(),
        cpu.cores_used,
        cpu.machine_steal_share * 100.0
    );
    Ok(BrokerDrain {
        drain,
        publish_rate,
        cpu,
    })
}
