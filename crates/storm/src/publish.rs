//! Publishing a storm: one channel with publisher confirms, up to `in_flight` publishes awaiting
//! their confirm at once, paced by the call rate, with a progress bar (rate and ETA).
//!
//! Publishes are `mandatory`: a message no queue takes (the service's queue is not bound yet)
//! comes back and stops the storm with a clear error instead of vanishing.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use lapin::{Confirmation, PublisherConfirm};
use tokio::time::Instant;

use crate::Message;

/// What one phase's publishing did.
#[derive(Debug, Clone, Copy)]
pub struct PublishStats {
    pub messages: usize,
    pub bytes: usize,
    pub elapsed: Duration,
}

impl PublishStats {
    /// Confirmed messages per second.
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

pub struct StormPublisher {
    conn: Connection,
    channel: Channel,
    exchange: String,
}

impl StormPublisher {
    /// Connects, uses the exchange as it exists (declares it as a durable topic exchange only
    /// when it is missing, as the producers do) and enables publisher confirms.
    pub async fn connect(url: &str, exchange: &str) -> anyhow::Result<Self> {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .context("connecting to RabbitMQ (amqp.url)")?;
        let channel = crate::simulate::publishing_channel(&conn, exchange)
            .await
            .with_context(|| format!("opening a confirming channel to exchange {exchange:?}"))?;
        Ok(StormPublisher {
            conn,
            channel,
            exchange: exchange.to_owned(),
        })
    }

    /// Publishes `msgs` in order. With `rate` > 0 (calls per second) a message is published no
    /// earlier than `at / rate` seconds after the first.
    pub async fn publish(
        &self,
        msgs: &[Message],
        rate: f64,
        in_flight: usize,
        label: &str,
    ) -> anyhow::Result<PublishStats> {
        let bar = ProgressBar::new(msgs.len() as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>11} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} {per_sec:0} ETA {eta}",
            )
            .expect("a valid template"),
        );
        bar.set_message(label.to_owned());
        // Without a terminal (CI, a pipe) the bar is hidden: print a line every few seconds.
        let ticker = bar.is_hidden().then(|| {
            let bar = bar.clone();
            let label = label.to_owned();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let per_sec = bar.per_sec();
                    let left = bar.length().unwrap_or(0).saturating_sub(bar.position());
                    eprintln!(
                        "{label}: {}/{} messages confirmed, {per_sec:.0}/s, ETA {}",
                        bar.position(),
                        bar.length().unwrap_or(0),
                        humantime::format_duration(Duration::from_secs(
                            (left as f64 / per_sec.max(1.0)) as u64
                        ))
                    );
                }
            })
        });
        let result = self.publish_all(msgs, rate, in_flight, &bar).await;
        if let Some(t) = ticker {
            t.abort();
        }
        bar.finish_and_clear();
        result
    }

    async fn publish_all(
        &self,
        msgs: &[Message],
        rate: f64,
        in_flight: usize,
        bar: &ProgressBar,
    ) -> anyhow::Result<PublishStats> {
        let started = Instant::now();
        let mut pending: VecDeque<PublisherConfirm> = VecDeque::with_capacity(in_flight);
        let mut bytes = 0usize;
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        for m in msgs {
            if rate > 0.0 {
                let due = started + Duration::from_secs_f64(m.at / rate);
                if due > Instant::now() + Duration::from_millis(1) {
                    tokio::time::sleep_until(due).await;
                }
            }
            while pending.len() >= in_flight {
                let confirm = pending.pop_front().expect("a pending confirm");
                self.settle(confirm.await?)?;
                bar.inc(1);
            }
            let confirm = self
                .channel
                .basic_publish(
                    self.exchange.as_str().into(),
                    m.routing_key.as_str().into(),
                    options,
                    &m.body,
                    properties(m),
                )
                .await
                .context("publishing")?;
            bytes += m.body.len();
            pending.push_back(confirm);
        }
        while let Some(confirm) = pending.pop_front() {
            self.settle(confirm.await?)?;
            bar.inc(1);
        }
        Ok(PublishStats {
            messages: msgs.len(),
            bytes,
            elapsed: started.elapsed(),
        })
    }

    fn settle(&self, confirmation: Confirmation) -> anyhow::Result<()> {
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => bail!(
                "the broker returned a message as unroutable: no queue is bound to exchange {:?} \
                 (is `cdr-service run` started with the same amqp settings?)",
                self.exchange
            ),
            Confirmation::Nack(_) => bail!("the broker nacked a message (could not store it)"),
            Confirmation::NotRequested => bail!("publisher confirms are not enabled"),
        }
    }

    /// Waits until `queue` holds no ready message, up to `max`; false if it did not, or
    /// cannot be inspected.
    pub async fn wait_for_drain(&self, queue: &str, max: Duration) -> bool {
        let deadline = Instant::now() + max;
        loop {
            match queue_depth(&self.conn, queue).await {
                Some(0) => return true,
                Some(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                _ => return false,
            }
        }
    }

    pub async fn close(self) {
        let _ = self.channel.close(200, "storm done".into()).await;
        let _ = self.conn.close(200, "storm done".into()).await;
    }
}

/// The properties a message goes out with, as its producer sets them: persistent, and its
/// content type where it has one.
pub fn properties(m: &Message) -> BasicProperties {
    let properties = BasicProperties::default().with_delivery_mode(2);
    match m.content_type {
        Some(content_type) => properties.with_content_type(content_type.into()),
        None => properties,
    }
}

/// Ready messages in a queue (`None` if it cannot be read, e.g. it does not exist). The queue
/// is declared passively on a channel of its own: a missing queue closes that channel, not the
/// caller's.
pub async fn queue_depth(conn: &Connection, queue: &str) -> Option<u32> {
    let channel = conn.create_channel().await.ok()?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let declared = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .ok()?;
    let _ = channel.close(200, "queue checked".into()).await;
    Some(declared.message_count())
}
