//! The test RabbitMQ, read directly: what a queue holds, what was dead-lettered and why.

use cdr_service::ingest::REASON_HEADER;
use lapin::options::BasicGetOptions;
use lapin::types::AMQPValue;
use lapin::{Connection, ConnectionProperties};

use crate::env::amqp_url;

/// Takes every message from a queue: (body, reject-reason header).
pub async fn drain_queue(queue: &str) -> Vec<(Vec<u8>, Option<String>)> {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("amqp");
    let ch = conn.create_channel().await.expect("channel");
    let mut out = Vec::new();
    while let Some(msg) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        let reason = msg
            .delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(REASON_HEADER).cloned())
            .and_then(|v| match v {
                AMQPValue::LongString(s) => {
                    Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                }
                _ => None,
            });
        out.push((msg.delivery.data.clone(), reason));
    }
    let _ = conn.close(200, "bye".into()).await;
    out
}

/// Takes messages from the dead-letter `queue` until there are at least `n` (panics after
/// 20 s with what came).
pub async fn wait_for_dead_letters(queue: &str, n: usize) -> Vec<(Vec<u8>, Option<String>)> {
    let mut dead = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while dead.len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "dead letters missing: {dead:?}"
        );
        dead.extend(drain_queue(queue).await);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    dead
}

/// Messages waiting in a queue (declared passively); panics if it does not exist.
pub async fn queue_depth(queue: &str) -> u32 {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("amqp");
    let depth = cdr_storm::publish::queue_depth(&conn, queue).await;
    let _ = conn.close(200, "bye".into()).await;
    depth.expect("queue exists")
}

/// Declares `queue` durable with `arguments` and binds it to `exchange` (which must exist)
/// with `#`: a queue as a deployment, or the service it replaces, left it before the service
/// starts.
pub async fn declare_bound_queue(queue: &str, exchange: &str, arguments: lapin::types::FieldTable) {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("amqp");
    let ch = conn.create_channel().await.expect("channel");
    let durable = lapin::options::QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(queue.into(), durable, arguments)
        .await
        .expect("declare the queue");
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        "#".into(),
        Default::default(),
        Default::default(),
    )
    .await
    .expect("bind the queue");
    let _ = conn.close(200, "bye".into()).await;
}

/// Publishes raw bodies as a given producer does: its routing key and its content type, or
/// none (today's signaling and media services set none, the agent service
/// `application/protobuf`, JSON producers `application/json` or none). Each publish waits for
/// the broker's confirm.
pub struct Producer(cdr_storm::simulate::Publisher);

impl Producer {
    pub async fn connect(exchange: &str) -> Producer {
        let publisher = cdr_storm::simulate::Publisher::connect(&amqp_url(), exchange)
            .await
            .expect("publisher");
        Producer(publisher)
    }

    /// Publishes and waits for the broker's confirm; panics on a nack or an error.
    pub async fn publish(&self, routing_key: &str, body: &[u8], content_type: Option<&str>) {
        self.0
            .publish_as(routing_key, body, content_type)
            .await
            .expect("publish, confirmed");
    }
}
