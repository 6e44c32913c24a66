//! `cdr-service simulate`: one synthetic call published to the configured exchange, the way the
//! platform's producers publish it (today's in protobuf, older ones in JSON), then its record
//! read back. It is how a new deployment is checked end to end.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde_json::{Value, json};

use cdr_core::event::Format;
use cdr_schema::row::CallRow;

use crate::Target;
use crate::protobuf::{self, JSON_CONTENT_TYPE};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Order {
    /// As the call happened.
    InOrder,
    /// Last event first.
    Reversed,
    /// Random order (see --seed).
    Shuffled,
}

/// The wire format the call's events are published in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WireFormat {
    /// Binary protobuf (`sentiric.event.v1`), as today's producers publish: no content type
    /// from the signaling and media services, `application/protobuf` from the agent service.
    Protobuf,
    /// JSON with `application/json`, as older producers publish.
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct SimulateOptions {
    /// Call-ID to use (default: a fresh one).
    #[arg(long)]
    pub call_id: Option<String>,
    /// Order in which the call's events are published.
    #[arg(long, value_enum, default_value = "in-order")]
    pub order: Order,
    /// Wire format of the events. The default, `protobuf`, is what today's producers publish,
    /// so what a current deployment receives; `json` is what older producers publish.
    #[arg(long, value_enum, default_value = "protobuf")]
    pub format: WireFormat,
    /// Publish this many extra copies of randomly chosen events (redeliveries).
    #[arg(long, default_value_t = 0)]
    pub duplicates: usize,
    /// Do not publish `call.ended`: the record appears after tracker.idle_timeout, as TIMED_OUT.
    #[arg(long)]
    pub drop_end: bool,
    /// Seed for the shuffled order and the duplicates.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How long to wait for the record.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// A synthetic call: the events the platform's producers would send for it.
#[derive(Debug, Clone)]
pub struct SyntheticCall {
    pub call_id: String,
    pub trace_id: String,
    pub user_id: String,
    pub tenant_id: String,
    pub start: DateTime<Utc>,
    pub answer_after: Duration,
    pub talk: Duration,
}

impl SyntheticCall {
    pub fn new(call_id: impl Into<String>, start: DateTime<Utc>) -> Self {
        let call_id = call_id.into();
        SyntheticCall {
            trace_id: format!("trace-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            user_id: uuid::Uuid::new_v4().to_string(),
            tenant_id: "sentiric_demo".into(),
            call_id,
            start,
            answer_after: Duration::from_secs(3),
            talk: Duration::from_secs(42),
        }
    }

    fn at(&self, offset: Duration) -> String {
        let t = self.start + chrono::Duration::from_std(offset).unwrap_or_default();
        cdr_core::event::format_timestamp(t)
    }

    pub fn started(&self) -> Value {
        json!({
            "eventType": "call.started",
            "traceId": self.trace_id,
            "callId": self.call_id,
            "timestamp": self.at(Duration::ZERO),
            "from": "\"<sip:905551234567@203.0.113.5>;tag=abc\"",
            "to": "<sip:902124440000@198.51.100.7>",
            "media": {"server_rtp_port": 10044, "caller_rtp_addr": "203.0.113.5:40000"},
            "dialplan": {
                "dialplanId": "DP_DEMO",
                "tenantId": self.tenant_id,
                "action": {"action": "START_AI_CONVERSATION", "actionData": {"data": {}}},
                "matchedUser": null,
                "matchedContact": null,
                "inboundRoute": {"phoneNumber": "902124440000", "tenantId": self.tenant_id}
            }
        })
    }

    pub fn answered(&self) -> Value {
        json!({
            "eventType": "call.answered",
            "traceId": self.trace_id,
            "callId": self.call_id,
            "timestamp": self.at(self.answer_after),
        })
    }

    pub fn identified(&self) -> Value {
        json!({
            "eventType": "user.identified.for_call",
            "traceId": self.trace_id,
            "callId": self.call_id,
            "userId": self.user_id,
            "contactId": 42,
            "tenantId": self.tenant_id,
            "timestamp": self.at(self.answer_after + Duration::from_secs(1)),
        })
    }

    pub fn ended(&self) -> Value {
        json!({
            "eventType": "call.ended",
            "traceId": self.trace_id,
            "callId": self.call_id,
            "timestamp": self.at(self.answer_after + self.talk),
            "reason": "normal_clearing",
        })
    }

    pub fn recording(&self) -> Value {
        json!({
            "eventType": "call.recording.available",
            "traceId": self.trace_id,
            "callId": self.call_id,
            "recordingUri": format!("s3://recordings/{}/{}.wav", self.tenant_id, self.call_id),
            "timestamp": self.at(self.answer_after + self.talk + Duration::from_secs(5)),
        })
    }

    /// The whole call, in the order it happened.
    pub fn events(&self, with_end: bool) -> Vec<Value> {
        let mut events = vec![self.started(), self.answered(), self.identified()];
        if with_end {
            events.push(self.ended());
        }
        events.push(self.recording());
        events
    }
}

/// An event as its producer publishes it.
#[derive(Clone)]
struct Outgoing {
    event_type: String,
    body: Vec<u8>,
    format: Format,
    content_type: Option<&'static str>,
}

impl Outgoing {
    /// `event` in `format`: in protobuf, its twin as today's producer sends it; an event
    /// type no current producer sends as protobuf stays JSON, as on the platform.
    fn new(event: &Value, format: WireFormat) -> Outgoing {
        let event_type = event["eventType"].as_str().unwrap_or_default().to_owned();
        let twin = match format {
            WireFormat::Protobuf => protobuf::encode(event),
            WireFormat::Json => None,
        };
        match twin {
            Some(twin) => Outgoing {
                event_type,
                body: twin.body,
                format: Format::Protobuf,
                content_type: twin.content_type,
            },
            None => Outgoing {
                event_type,
                body: event.to_string().into_bytes(),
                format: Format::Json,
                content_type: Some(JSON_CONTENT_TYPE),
            },
        }
    }

    /// How it goes out, for the listing: its format and content type.
    fn describe(&self) -> String {
        format!(
            "{} ({}, {})",
            self.event_type,
            self.format.as_str(),
            self.content_type.unwrap_or("no content type")
        )
    }
}

/// Publishes events to an exchange with publisher confirms, routing key = event type.
pub struct Publisher {
    _conn: Connection,
    channel: Channel,
    exchange: String,
}

/// A channel in confirm mode for publishing to `exchange`. Uses the exchange as it exists (an
/// old deployment may have it as fanout); declares it as a durable topic exchange, as the
/// producers do, only when it is missing.
pub async fn publishing_channel(
    conn: &Connection,
    exchange: &str,
) -> Result<Channel, lapin::Error> {
    let mut channel = conn.create_channel().await?;
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    if channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            passive,
            FieldTable::default(),
        )
        .await
        .is_err()
    {
        // The failed passive declare closed that channel.
        channel = conn.create_channel().await?;
        channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
    }
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

impl Publisher {
    pub async fn connect(url: &str, exchange: &str) -> Result<Self, lapin::Error> {
        let conn = Connection::connect(url, ConnectionProperties::default()).await?;
        let channel = publishing_channel(&conn, exchange).await?;
        Ok(Publisher {
            _conn: conn,
            channel,
            exchange: exchange.to_owned(),
        })
    }

    /// Publishes raw bytes as `application/json` and waits for the broker's confirm.
    pub async fn publish_raw(&self, routing_key: &str, body: &[u8]) -> Result<(), lapin::Error> {
        self.publish_as(routing_key, body, Some(JSON_CONTENT_TYPE))
            .await
    }

    /// Publishes raw bytes with `content_type` (or none) and waits for the broker's confirm.
    pub async fn publish_as(
        &self,
        routing_key: &str,
        body: &[u8],
        content_type: Option<&str>,
    ) -> Result<(), lapin::Error> {
        let mut properties = BasicProperties::default().with_delivery_mode(2);
        if let Some(content_type) = content_type {
            properties = properties.with_content_type(content_type.into());
        }
        let confirm = self
            .channel
            .basic_publish(
                self.exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await?
            .await?;
        if confirm.is_nack() {
            return Err(lapin::Error::from(std::io::Error::other(
                "broker nacked the message",
            )));
        }
        Ok(())
    }

    pub async fn publish(&self, event: &Value) -> Result<(), lapin::Error> {
        let key = event
            .get("eventType")
            .and_then(Value::as_str)
            .unwrap_or_default();
        self.publish_raw(key, event.to_string().as_bytes()).await
    }
}

/// The columns a user checks, as `simulate` prints them.
#[derive(Debug, serde::Serialize)]
pub struct RecordView {
    pub call_id: String,
    pub status: Option<String>,
    pub disposition: Option<String>,
    pub start_time: Option<DateTime<Utc>>,
    pub answer_time: Option<DateTime<Utc>>,
    pub end_time: Option<DateTime<Utc>>,
    pub duration_seconds: Option<i32>,
    pub user_id: Option<uuid::Uuid>,
    pub contact_id: Option<i32>,
    pub tenant_id: Option<String>,
    pub caller_number: Option<String>,
    pub callee_number: Option<String>,
    pub recording_url: Option<String>,
    pub trace_id: Option<String>,
    pub event_count: i32,
}

impl From<CallRow> for RecordView {
    fn from(r: CallRow) -> RecordView {
        RecordView {
            call_id: r.call_id,
            status: r.status,
            disposition: r.disposition,
            start_time: r.start_time,
            answer_time: r.answer_time,
            end_time: r.end_time,
            duration_seconds: r.duration_seconds,
            user_id: r.user_id,
            contact_id: r.contact_id,
            tenant_id: r.tenant_id,
            caller_number: r.caller_number,
            callee_number: r.callee_number,
            recording_url: r.recording_url,
            trace_id: r.trace_id,
            event_count: r.event_count,
        }
    }
}

/// Waits until the call's record folds at least `min_events` events.
pub async fn wait_for_record(
    pool: &sqlx::PgPool,
    call_id: &str,
    min_events: i32,
    timeout: Duration,
) -> Result<Option<RecordView>, sqlx::Error> {
    let deadline = Instant::now() + timeout;
    loop {
        let row = CallRow::by_id(call_id).fetch_optional(pool).await?;
        if let Some(r) = row
            && r.event_count >= min_events
        {
            return Ok(Some(r.into()));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs the command: publishes the call, waits for its record and prints it; exits with
/// failure when no complete record came within `--timeout`.
pub async fn run(target: &dyn Target, o: SimulateOptions) -> anyhow::Result<ExitCode> {
    let call_id = o
        .call_id
        .clone()
        .unwrap_or_else(|| format!("sim-{}@198.51.100.7", uuid::Uuid::new_v4().simple()));
    let call = SyntheticCall::new(&call_id, Utc::now());
    let mut events: Vec<Outgoing> = call
        .events(!o.drop_end)
        .iter()
        .map(|e| Outgoing::new(e, o.format))
        .collect();
    let distinct = events.len() as i32;
    let mut rng = rand::rngs::StdRng::seed_from_u64(o.seed);
    match o.order {
        Order::InOrder => {}
        Order::Reversed => events.reverse(),
        Order::Shuffled => events.shuffle(&mut rng),
    }
    for _ in 0..o.duplicates {
        let pick = events[rand::RngExt::random_range(&mut rng, 0..events.len())].clone();
        let at = rand::RngExt::random_range(&mut rng, 0..=events.len());
        events.insert(at, pick);
    }

    let publisher = Publisher::connect(target.amqp_url(), target.exchange()).await?;
    println!(
        "publishing {} events ({} distinct) for call {call_id} to exchange {:?}",
        events.len(),
        distinct,
        target.exchange()
    );
    for e in &events {
        publisher
            .publish_as(&e.event_type, &e.body, e.content_type)
            .await?;
        println!("  -> {}", e.describe());
    }
    if o.drop_end {
        println!(
            "no call.ended: the record appears as TIMED_OUT after tracker.idle_timeout ({})",
            humantime::format_duration(target.idle_timeout())
        );
    }
    let pool = target.database().map_err(anyhow::Error::from_boxed)?;
    println!(
        "waiting up to {} for the record...",
        humantime::format_duration(o.timeout)
    );
    match wait_for_record(&pool, &call_id, distinct, o.timeout).await? {
        Some(record) => {
            println!("{}", serde_json::to_string_pretty(&record)?);
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!(
                "no record for {call_id} within {}: is `cdr-service run` running against the same database and exchange?",
                humantime::format_duration(o.timeout)
            );
            Ok(ExitCode::FAILURE)
        }
    }
}
