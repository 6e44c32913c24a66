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

/// Messages waiting in a queue (declared passively); panics if it does not exist.
pub async fn queue_depth(queue: &str) -> u32 {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("amqp");
    let depth = cdr_storm::publish::queue_depth(&conn, queue).await;
    let _ = conn.close(200, "bye".into()).await;
    depth.expect("queue exists")
}
