//! The log floor, after each service drain: the backlog decoded, appended with the service's
//! event log and acked after each commit by a consumer in the bench that does nothing after
//! the log.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::Utc;
use futures_util::StreamExt;
use lapin::options::BasicAckOptions;
use tokio::sync::mpsc;

use crate::clock::{Drain, DrainClock};
use crate::cpu::CpuShares;
use crate::env::{Env, bench_consumer, publish_backlog};
use crate::{EventLog, Limits, Settings, Storm, event, limits, migrate};

const LABEL: &str = "log floor";

/// A batch for the committer: its events and the acker of its last delivery.
type Batch = (Vec<event::Envelope>, lapin::Acker);

/// The least a consumer that keeps the first guarantee (nothing acked before its raw event is
/// committed) does, timed as the broker drains are: decode each delivery, append the raw events
/// in batches with the service's own event log (the same statement, `open_calls` included, the
/// same batch size and age), ack `multiple` after each commit, the next batch filling while one
/// commits. No actors, no records, dialog turns or usage lines, no linger: the service's ack
/// path alone. Whatever a service does after the log only adds to it, so the floor's rate is
/// above what any service built on this log could reach on this machine.
///
/// It runs on a runtime of its own with one worker, as the service does by default on two
/// cores (`runtime.worker_threads`), rather than on the bench's.
pub async fn log_floor(
    env: &mut Env,
    storm: &Storm,
    round: usize,
) -> anyhow::Result<(Drain, CpuShares)> {
    let db_url = env
        .extra_database(format!("cdr_bench_{}_floor{round}", env.id))
        .await?;
    let (exchange, queue) = (
        env.name(&format!("floor{round}")),
        env.name(&format!("floor{round}.queue")),
    );
    env.declare(&exchange, &queue).await?;
    progress!(
        "{LABEL}: publishing the backlog ({} messages) into {queue}",
        storm.main.len()
    );
    publish_backlog(&exchange, &storm.main, &format!("{LABEL} backlog")).await?;

    let (settings, total) = (env.settings.clone(), storm.main.len() as u64);
    let (done, result) = tokio::sync::oneshot::channel();
    let consumer_queue = queue.clone();
    std::thread::spawn(move || {
        let drained = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                rt.block_on(async move {
                    tokio::spawn(floor_drain(LABEL, db_url, consumer_queue, settings, total))
                        .await?
                })
            });
        let _ = done.send(drained);
    });
    let drained = result.await.context("the log floor's thread ended")?;
    env.delete_queue(&queue).await;
    let (drain, cpu) = drained?;
    progress!(
        "{LABEL}: {} messages logged and acked in {:.2}s: {:.0} events/s; cpu {}",
        drain.events,
        drain.seconds,
        drain.rate(),
        cpu.cores_used
    );
    Ok((drain, cpu))
}

/// The log floor's consumer (see `log_floor`), on the floor's own runtime.
async fn floor_drain(
    label: &'static str,
    db_url: String,
    queue: String,
    settings: Settings,
    total: u64,
) -> anyhow::Result<(Drain, CpuShares)> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&db_url)
        .await?;
    migrate(&pool).await?;
    let ingest = &settings.ingest;
    let (batch_size, max_age) = (ingest.batch_size.max(1), ingest.batch_max_age);
    let log = EventLog::remembering(pool.clone(), ingest.remembered_messages);
    let limits = limits(&settings);
    let (conn, mut consumer) = bench_consumer(&queue, "cdr-bench-floor").await?;
    // Counts events committed (their acks on the way).
    let clock = DrainClock::start();
    // As in the service (`ingest`): a one-slot hand-off. The open batch is due once full or
    // `batch_max_age` old, and goes to the committer when the slot is free; until then it keeps
    // growing. The committer acks `multiple`, in order, while it commits the next batch.
    let (handoff, batches) = mpsc::channel::<Batch>(1);
    let committer = spawn_committer(log, batches, clock.counter());
    let batching = Batching {
        label,
        total,
        batch_size,
        max_age,
        limits,
    };
    batching.fill(&mut consumer, &handoff).await?;
    drop(handoff);
    let committed = committer.await??;
    // The consumer is the bench itself: its CPU is the "bench" group's.
    let timed = clock.stop(committed as usize).await?;
    if committed != total {
        bail!("{label}: {committed} of {total} events committed");
    }
    let _ = conn.close(200, "bye".into()).await;
    pool.close().await;
    Ok(timed)
}

/// The committer: appends each batch, then acks it `multiple` (the previous ack settled
/// first, so that acks leave in order) while it appends the next; counts the events committed.
fn spawn_committer(
    log: EventLog,
    mut batches: mpsc::Receiver<Batch>,
    counter: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<anyhow::Result<u64>> {
    tokio::spawn(async move {
        let mut done = 0u64;
        let mut acking: Option<tokio::task::JoinHandle<Result<bool, lapin::Error>>> = None;
        while let Some((batch, acker)) = batches.recv().await {
            log.append(&batch).await?;
            if let Some(previous) = acking.take() {
                previous.await??;
            }
            acking = Some(tokio::spawn(async move {
                acker.ack(BasicAckOptions { multiple: true }).await
            }));
            done += batch.len() as u64;
            counter.store(done, Ordering::Relaxed);
        }
        if let Some(last) = acking.take() {
            last.await??;
        }
        anyhow::Ok(done)
    })
}

/// How the floor's consumer batches the deliveries, as the service's ingest does.
struct Batching {
    label: &'static str,
    total: u64,
    batch_size: usize,
    max_age: Duration,
    limits: Limits,
}

impl Batching {
    /// Decodes `total` deliveries into batches and hands each to the committer once due.
    async fn fill(
        &self,
        consumer: &mut lapin::Consumer,
        handoff: &mpsc::Sender<Batch>,
    ) -> anyhow::Result<()> {
        let (total, batch_size, max_age) = (self.total, self.batch_size, self.max_age);
        let mut received = 0u64;
        let mut batch = Vec::with_capacity(batch_size);
        let mut last: Option<lapin::Acker> = None;
        let mut due = false;
        let batch_timer = tokio::time::sleep(max_age);
        tokio::pin!(batch_timer);
        while received < total || !batch.is_empty() {
            tokio::select! {
                permit = handoff.reserve(), if due => {
                    // Closed: the committer failed, and says why.
                    let Ok(permit) = permit else { break };
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(batch_size));
                    permit.send((full, last.take().context("a batch without its last delivery")?));
                    due = false;
                }
                () = &mut batch_timer, if !batch.is_empty() && !due => due = true,
                delivery = consumer.next(), if received < total && batch.len() < batch_size => {
                    let delivery = delivery.context("the consumer ended early")??;
                    received += 1;
                    let envelope = event::decode(&delivery.data, Utc::now(), self.limits)
                        .map_err(|r| anyhow::anyhow!("{}: a storm message was rejected: {r}", self.label))?;
                    if batch.is_empty() {
                        batch_timer.as_mut().reset(tokio::time::Instant::now() + max_age);
                    }
                    batch.push(envelope);
                    last = Some(delivery.acker);
                    due |= batch.len() >= batch_size || received == total;
                }
            }
        }
        Ok(())
    }
}
