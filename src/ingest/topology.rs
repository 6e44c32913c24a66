//! Broker topology: the topic exchange the producers publish to, the service's durable queue
//! and its binding, and the dead-letter exchange and queue. Existing ones declared by an
//! earlier deployment or an operator are used as they are where RabbitMQ would refuse to
//! redeclare them.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ExchangeKind};
use tracing::warn;

use super::IngestError;
use crate::config::AmqpSettings;

/// Declares the exchange, the queue and its binding, and the dead-letter exchange and queue.
pub(super) async fn declare_topology(
    conn: &Connection,
    amqp: &AmqpSettings,
) -> Result<(), IngestError> {
    let channel = conn.create_channel().await?;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    if let Err(e) = channel
        .exchange_declare(
            amqp.exchange.as_str().into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
    {
        if !is_precondition_failed(&e) {
            return Err(e.into());
        }
        if !amqp.accept_existing_exchange_type {
            return Err(IngestError::ExchangeTypeMismatch {
                exchange: amqp.exchange.clone(),
            });
        }
        // The failed declare closed that channel; check on a new one that the exchange exists.
        let passive = conn.create_channel().await?;
        passive
            .exchange_declare(
                amqp.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    passive: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        warn!(exchange = %amqp.exchange, "exchange exists with another type than topic; binding to it as it is");
        return declare_queues(conn, &passive, amqp).await;
    }
    declare_queues(conn, &channel, amqp).await
}

async fn declare_queues(
    conn: &Connection,
    channel: &Channel,
    amqp: &AmqpSettings,
) -> Result<(), IngestError> {
    channel
        .exchange_declare(
            amqp.dead_letter_exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let arguments = queue_arguments(amqp);
    // The service's queue: one consumer at a time gets its deliveries, a second guard beside
    // the lease (`lease`) that makes one instance active.
    let mut single_active = arguments.clone();
    single_active.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    let every = ["#".to_owned()];
    let bounded = dead_letter_arguments(amqp);
    for (queue, exchange, binding_keys, arguments) in [
        (
            &amqp.queue,
            &amqp.exchange,
            &amqp.binding_keys[..],
            &single_active,
        ),
        (
            &amqp.dead_letter_queue,
            &amqp.dead_letter_exchange,
            &every[..],
            &bounded,
        ),
    ] {
        declare_queue(conn, queue, arguments).await?;
        for binding_key in binding_keys {
            channel
                .queue_bind(
                    queue.as_str().into(),
                    exchange.as_str().into(),
                    binding_key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
    }
    let _ = channel.close(200, "topology declared".into()).await;
    Ok(())
}

/// The arguments the service declares its queues with (`amqp.queue_version`). Public so that
/// the storm benchmark's reference consumers drain the same kind of queue as the service.
pub fn queue_arguments(amqp: &AmqpSettings) -> FieldTable {
    let mut arguments = FieldTable::default();
    if amqp.queue_version > 0 {
        arguments.insert(
            "x-queue-version".into(),
            AMQPValue::LongLongInt(amqp.queue_version.into()),
        );
    }
    arguments
}

/// The dead-letter queue's arguments: the service's queues' and its bounds
/// (`amqp.dead_letter_max_length`, `amqp.dead_letter_max_bytes`), the oldest dropped past them.
pub fn dead_letter_arguments(amqp: &AmqpSettings) -> FieldTable {
    let mut arguments = queue_arguments(amqp);
    if amqp.dead_letter_max_length > 0 {
        arguments.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(amqp.dead_letter_max_length.into()),
        );
    }
    if amqp.dead_letter_max_bytes > 0 {
        arguments.insert(
            "x-max-length-bytes".into(),
            AMQPValue::LongLongInt(i64::try_from(amqp.dead_letter_max_bytes).unwrap_or(i64::MAX)),
        );
    }
    if amqp.dead_letter_max_length > 0 || amqp.dead_letter_max_bytes > 0 {
        arguments.insert(
            "x-overflow".into(),
            AMQPValue::LongString("drop-head".into()),
        );
    }
    arguments
}

/// Declares a durable queue with `arguments`, on a channel of its own. A queue that exists
/// with other arguments (another version, a quorum queue, a length limit: declared by an
/// earlier deployment or by an operator) is consumed as it is: RabbitMQ refuses to redeclare
/// it, those arguments are the operator's to choose, and refusing them would stop every record.
async fn declare_queue(
    conn: &Connection,
    queue: &str,
    arguments: &FieldTable,
) -> Result<(), IngestError> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let channel = conn.create_channel().await?;
    match channel
        .queue_declare(queue.into(), durable, arguments.clone())
        .await
    {
        Ok(_) => {
            let _ = channel.close(200, "queue declared".into()).await;
            Ok(())
        }
        Err(e) if is_precondition_failed(&e) => {
            // The refused declare closed that channel; check on a new one that the queue exists.
            declare_passive(conn, queue).await?;
            warn!(
                queue,
                error = %e,
                "queue exists with other arguments; consuming it as it is (a `queue-version` policy converts it in place; without `x-single-active-consumer`, the lease alone keeps other instances from consuming it)"
            );
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// The queue as it is on the broker (its message count, say), declared passively on a channel
/// of its own: a missing queue closes that channel, not the caller's.
pub async fn declare_passive(conn: &Connection, queue: &str) -> Result<lapin::Queue, lapin::Error> {
    let channel = conn.create_channel().await?;
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let _ = channel.close(200, "queue checked".into()).await;
    Ok(declared)
}

fn is_precondition_failed(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp)
        if *amqp.kind() == AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED))
}
