//! How fast the broker hands a backlog to a consumer that does nothing but ack, as a function
//! of how late its acks come: the service acks a batch only once its append has committed, so
//! its acks come one commit after the batch closes.
//!
//! Deliveries are gathered into batches (up to `--batch` of them) while the previous batch
//! "commits" (a sleep of `--delay-ms`, no CPU), then each batch is acked `multiple`, as the
//! service's committer does. `--delay-ms 0` acks every 500 deliveries at once instead, as the
//! storm benchmark's broker drain does.
//!
//! The broker is found as `cdr-service run` finds its own (config/default.toml, `RABBITMQ_URL`,
//! `CDR__AMQP__URL`).
//!
//! ```sh
//! # a backlog: declare the service's queue (start it once, then stop it), then publish
//! cargo run --release -- storm --calls 40000 --late 0 --poison 0 --missing-end 0
//! cargo run --release --example ack_delay -- --queue sentiric.cdr_service.events --messages 277800 --delay-ms 27
//! ```

use secrecy::ExposeSecret;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cdr_service::config::Settings;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

struct Args {
    queue: String,
    messages: u64,
    delay: Duration,
    prefetch: u16,
    batch: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        queue: String::new(),
        messages: 0,
        delay: Duration::ZERO,
        prefetch: 6000,
        batch: 2000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--queue" => a.queue = value,
            "--messages" => a.messages = value.parse()?,
            "--delay-ms" => a.delay = Duration::from_millis(value.parse()?),
            "--prefetch" => a.prefetch = value.parse()?,
            "--batch" => a.batch = value.parse()?,
            other => bail!("unknown option {other}"),
        }
    }
    if a.queue.is_empty() || a.messages == 0 || a.batch == 0 {
        bail!("usage: ack_delay --queue Q --messages N [--delay-ms D] [--prefetch P] [--batch B]");
    }
    Ok(a)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let settings = Settings::load(None)?;
    let conn = Connection::connect(
        settings.amqp.url.expose_secret(),
        ConnectionProperties::default(),
    )
    .await?;
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(a.prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            a.queue.as_str().into(),
            "cdr-ack-delay".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let started = Instant::now();
    let mut n = 0u64;
    let mut next = async || -> anyhow::Result<Delivery> {
        Ok(consumer.next().await.context("the consumer ended")??)
    };
    if a.delay.is_zero() {
        while n < a.messages {
            let d = next().await?;
            n += 1;
            if n.is_multiple_of(500) || n == a.messages {
                d.acker.ack(BasicAckOptions { multiple: true }).await?;
            }
        }
    } else {
        // One slot, as in the service: the next batch grows while this one "commits".
        let (handoff, mut batches) = tokio::sync::mpsc::channel::<Delivery>(1);
        let delay = a.delay;
        let committer = tokio::spawn(async move {
            while let Some(last) = batches.recv().await {
                tokio::time::sleep(delay).await;
                last.acker.ack(BasicAckOptions { multiple: true }).await?;
            }
            anyhow::Ok(())
        });
        let mut open: Option<Delivery> = None;
        let mut in_batch = 0usize;
        while n < a.messages {
            tokio::select! {
                biased;
                permit = handoff.reserve(), if open.is_some() => {
                    permit?.send(open.take().context("a batch is open")?);
                    in_batch = 0;
                }
                d = next(), if in_batch < a.batch => {
                    open = Some(d?);
                    n += 1;
                    in_batch += 1;
                }
            }
        }
        if let Some(last) = open {
            handoff.send(last).await?;
        }
        drop(handoff);
        committer.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{} messages in {secs:.2}s: {:.0}/s (ack delay {:?}, prefetch {}, batches up to {})",
        a.messages,
        a.messages as f64 / secs,
        a.delay,
        a.prefetch,
        a.batch
    );
    let _ = conn.close(200, "bye".into()).await;
    Ok(())
}
