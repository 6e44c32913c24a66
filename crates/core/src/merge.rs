//! The fold: a call's events, in any order and with any duplicates, into one record.
//!
//! `CallState` is a join-semilattice: `apply` is commutative, associative and idempotent, so
//! folding any permutation of a multiset of events gives the same state, and folding a superset
//! later (late events) converges to the same state as folding everything at once. Every choice
//! between two events is made on their content (timestamp, then a digest of their meaning:
//! `meaning.rs`), never on arrival order or on the spelling of their bodies.
//!
//! Pure: no I/O, no clock. Prices come in as an argument.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::event::{EventKind, Identity, Started};

/// One logged event as the fold sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct CallEvent {
    pub timestamp: DateTime<Utc>,
    /// The event had no timestamp; `timestamp` is its receive time.
    pub timestamp_inferred: bool,
    /// SHA-256 of the body: the identity of a usage report without a `usageId`.
    pub body_hash: [u8; 32],
    pub trace_id: Option<String>,
    pub kind: EventKind,
    /// The tie-break between events with equal timestamps: a digest of the event's meaning
    /// (`meaning::tie`), the same for an event in either wire format.
    tie: [u8; 8],
}

impl CallEvent {
    pub fn new(
        timestamp: DateTime<Utc>,
        timestamp_inferred: bool,
        body_hash: [u8; 32],
        trace_id: Option<String>,
        kind: EventKind,
    ) -> Self {
        let tie = crate::meaning::tie(trace_id.as_deref(), timestamp_inferred, &kind);
        CallEvent {
            timestamp,
            timestamp_inferred,
            body_hash,
            trace_id,
            kind,
            tie,
        }
    }

    /// Where the event ranks among events with the same timestamp.
    pub fn tie(&self) -> [u8; 8] {
        self.tie
    }
}

impl CallEvent {
    /// The event of a body read back from the log, decoded exactly as `event::decode_hinted`
    /// decoded it when it came (`hint`: the format it found then; `received_at`: the stored
    /// receive time, standing in for a missing timestamp), without what only the log needs:
    /// the body's copy and its JSON rendering. `stored_hash` is the body's SHA-256 as the log
    /// keeps it, computed again when the row has none.
    pub fn from_logged(
        body: &[u8],
        hint: Option<crate::event::Format>,
        received_at: DateTime<Utc>,
        stored_hash: Option<[u8; 32]>,
    ) -> Result<CallEvent, crate::event::Reject> {
        use crate::event::{Limits, Render, decode_fields};
        let d = decode_fields(body, hint, received_at, Limits::REBUILD, Render::No)?;
        let body_hash = stored_hash.unwrap_or_else(|| Sha256::digest(body).into());
        Ok(CallEvent::new(
            d.timestamp,
            d.timestamp_inferred,
            body_hash,
            d.trace_id,
            d.kind,
        ))
    }
}

impl From<crate::event::Envelope> for CallEvent {
    fn from(e: crate::event::Envelope) -> Self {
        CallEvent::new(
            e.timestamp,
            e.timestamp_inferred,
            e.body_hash,
            e.trace_id,
            e.kind,
        )
    }
}

/// Where an event sits in the content order: timestamp, then the digest of its meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp {
    pub at: DateTime<Utc>,
    pub tie: [u8; 8],
    pub inferred: bool,
}

impl Stamp {
    fn of(e: &CallEvent) -> Self {
        Stamp {
            at: e.timestamp,
            tie: e.tie,
            inferred: e.timestamp_inferred,
        }
    }
}

/// A value with the stamp of the event it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked<T> {
    pub stamp: Stamp,
    pub value: T,
}

fn keep_earliest<T>(slot: &mut Option<Ranked<T>>, stamp: Stamp, value: impl FnOnce() -> T) {
    if slot.as_ref().is_none_or(|r| stamp < r.stamp) {
        *slot = Some(Ranked {
            stamp,
            value: value(),
        });
    }
}

fn keep_latest<T>(slot: &mut Option<Ranked<T>>, stamp: Stamp, value: impl FnOnce() -> T) {
    if slot.as_ref().is_none_or(|r| stamp > r.stamp) {
        *slot = Some(Ranked {
            stamp,
            value: value(),
        });
    }
}

/// The merged knowledge about one call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallState {
    /// Earliest event of any kind: stands in for the start when `call.started` never came.
    first_seen: Option<Stamp>,
    /// Latest event of any kind.
    last_seen: Option<Stamp>,
    trace_id: Option<Ranked<String>>,
    started: Option<Ranked<Box<Started>>>,
    answered: Option<Stamp>,
    ended: Option<Ranked<Option<String>>>,
    /// From `user.identified.for_call`: each field the latest event that gave it.
    identified: Known,
    /// From the dialplan of `call.started`, the same way.
    dialplan_identity: Known,
    inbound: bool,
    recording: Option<Ranked<String>>,
    dialog_turns: bool,
    terminate_requested: bool,
    /// Usage reports keyed by `usageId` (or body hash when absent), so each counts once; at
    /// most `MAX_USAGE_REPORTS_PER_CALL` of them, those of the lowest keys.
    usage: BTreeMap<String, Reported>,
    /// More distinct usage reports came than the call keeps.
    usage_capped: bool,
}

/// Most usage reports a call keeps (a real call has a handful): past it, those of the lowest
/// keys are kept and the record says `usage_capped`. The lowest keys, not the first to arrive,
/// so the record stays a function of the call's distinct events whatever their order. A bound
/// of the record's definition, not a setting: two instances folding one call must agree.
pub const MAX_USAGE_REPORTS_PER_CALL: usize = 1000;

/// The version of a usage report kept for its key. Between two reports with one key the
/// greater wins, field by field in this order, so arrival order never matters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Reported {
    resource_type: String,
    quantity: Decimal,
    service: Option<String>,
    at: DateTime<Utc>,
}

/// What a source of identity told about a call, field by field: each field holds the latest
/// event that gave it, so an event that leaves a field out (or gives only a placeholder,
/// which reads as absent) never erases what an earlier one said.
#[derive(Debug, Clone, Default, PartialEq)]
struct Known {
    user_id: Option<Ranked<Uuid>>,
    contact_id: Option<Ranked<i32>>,
    tenant_id: Option<Ranked<String>>,
}

impl Known {
    fn absorb(&mut self, stamp: Stamp, identity: &Identity) {
        if let Some(user) = identity.user_id {
            keep_latest(&mut self.user_id, stamp, || user);
        }
        if let Some(contact) = identity.contact_id {
            keep_latest(&mut self.contact_id, stamp, || contact);
        }
        if let Some(tenant) = &identity.tenant_id {
            keep_latest(&mut self.tenant_id, stamp, || tenant.clone());
        }
    }

    fn value<T>(slot: &Option<Ranked<T>>) -> Option<&T> {
        slot.as_ref().map(|r| &r.value)
    }
}

/// Where a call stands, for the live view and the active-call gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Ringing,
    Answered,
    Ended,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// The call's end is known.
    Completed,
    /// Written by the idle timeout without an end; becomes COMPLETED if the end arrives later.
    TimedOut,
}

impl Status {
    pub const ALL: [Status; 2] = [Status::Completed, Status::TimedOut];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Completed => "COMPLETED",
            Status::TimedOut => "TIMED_OUT",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Disposition {
    Answered,
    NoAnswer,
    Busy,
    Failed,
}

impl Disposition {
    pub const ALL: [Disposition; 4] = [
        Disposition::Answered,
        Disposition::NoAnswer,
        Disposition::Busy,
        Disposition::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Answered => "ANSWERED",
            Disposition::NoAnswer => "NO_ANSWER",
            Disposition::Busy => "BUSY",
            Disposition::Failed => "FAILED",
        }
    }
}

/// The consolidated row of `calls`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallRecord {
    pub call_id: String,
    pub trace_id: Option<String>,
    pub user_id: Option<Uuid>,
    pub contact_id: Option<i32>,
    pub tenant_id: Option<String>,
    pub start_time: Option<DateTime<Utc>>,
    pub answer_time: Option<DateTime<Utc>>,
    pub end_time: Option<DateTime<Utc>>,
    /// End minus answer when answered, else end minus start; never negative.
    pub duration_seconds: Option<i32>,
    /// End minus answer, only for calls with a known answer time.
    pub billable_seconds: Option<i32>,
    pub status: Status,
    pub disposition: Disposition,
    pub recording_url: Option<String>,
    pub total_cost: Option<Decimal>,
    /// `INBOUND` when the dialplan resolved an inbound route; None when no event says (the
    /// platform's column then takes its default, `INBOUND`: no producer marks a call outbound).
    pub direction: Option<String>,
    pub caller_number: Option<String>,
    pub callee_number: Option<String>,
    /// The SIP response code the end implies, where one is known (`sip_code`).
    pub sip_hangup_cause: Option<i32>,
    /// The end event's `reason` as sent.
    pub end_reason: Option<String>,
    /// Who hung up: `CALLER`, `CALLEE` or `SYSTEM` (the platform's values).
    pub hangup_source: Option<String>,
    /// Which of start/answer/end stand on a receive time, comma-separated; None when all were sent.
    pub inferred_times: Option<String>,
    /// Figures of the events the record could not keep, comma-separated (`ANOMALIES`); None
    /// when there are none. The call is real and its record written: only those figures are
    /// missing from it.
    pub anomalies: Option<String>,
}

/// What `CallRecord::anomalies` names:
/// - `cost_overflow`: a usage line's cost, or the sum of them, beyond any arithmetic (a quantity
///   of 10^28, say): the cost is left NULL;
/// - `cost_unfit`: a line's cost or `total_cost` beyond its column (`COST_COLUMN`): left NULL;
/// - `quantity_unfit`: a usage quantity beyond its column (`QUANTITY_COLUMN`): its line is left
///   out of `usage_records` (the event stays in the log);
/// - `usage_capped`: more distinct usage reports than `MAX_USAGE_REPORTS_PER_CALL`: only those
///   of the lowest keys make lines (the others stay in the log);
/// - `events_capped` (`EVENTS_CAPPED`): more distinct events than the service's cap per call:
///   the record is folded from the first ones in the log, and the call quarantined (the fold
///   does not know the cap; the tracker flags the record).
pub const ANOMALIES: [&str; 5] = [
    "cost_overflow",
    "cost_unfit",
    "quantity_unfit",
    "usage_capped",
    EVENTS_CAPPED,
];

/// The anomaly of a call with more events than the service folds per call.
pub const EVENTS_CAPPED: &str = "events_capped";

impl CallRecord {
    /// Adds `anomaly` (one of `ANOMALIES`) to the record's list, once, in the list's order.
    pub fn flag(&mut self, anomaly: &'static str) {
        let mut found: Vec<&str> = self
            .anomalies
            .as_deref()
            .map(|a| a.split(',').collect())
            .unwrap_or_default();
        if found.contains(&anomaly) {
            return;
        }
        found.push(anomaly);
        let listed = ANOMALIES.iter().filter(|a| found.contains(a));
        self.anomalies = Some(listed.copied().collect::<Vec<_>>().join(","));
    }
}

/// `usage_records.calculated_cost` and `calls.total_cost`: numeric(10,5).
pub const COST_COLUMN: (u32, u32) = (10, 5);
/// `usage_records.quantity`: numeric(15,5).
pub const QUANTITY_COLUMN: (u32, u32) = (15, 5);

/// Whether `value` fits a `numeric(precision, scale)` column once rounded to `scale` places:
/// a value that does not would make the whole statement fail.
pub fn fits_numeric(value: Decimal, (precision, scale): (u32, u32)) -> bool {
    let limit = Decimal::from(10u64.pow(precision - scale));
    value.round_dp(scale).abs() < limit
}

/// Unit prices from `cost_models`, each valid from its start date until the next one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PriceBook {
    prices: HashMap<String, Vec<(DateTime<Utc>, Decimal)>>,
}

/// Resource type of the telephony minutes added to every answered call.
pub const TELEPHONY_MINUTE: &str = "telephony_minute";

impl PriceBook {
    pub fn new(rows: impl IntoIterator<Item = (String, DateTime<Utc>, Decimal)>) -> Self {
        let mut prices: HashMap<String, Vec<(DateTime<Utc>, Decimal)>> = HashMap::new();
        for (resource, from, price) in rows {
            prices.entry(resource).or_default().push((from, price));
        }
        for list in prices.values_mut() {
            list.sort();
        }
        PriceBook { prices }
    }

    /// The unit price in force at `at`.
    pub fn price_at(&self, resource: &str, at: DateTime<Utc>) -> Option<Decimal> {
        let list = self.prices.get(resource)?;
        list.iter()
            .rev()
            .find(|(from, _)| *from <= at)
            .map(|(_, p)| *p)
    }
}

impl CallState {
    /// Joins one event into the state.
    pub fn apply(&mut self, e: &CallEvent) {
        let stamp = Stamp::of(e);
        if self.first_seen.is_none_or(|s| stamp < s) {
            self.first_seen = Some(stamp);
        }
        if self.last_seen.is_none_or(|s| stamp > s) {
            self.last_seen = Some(stamp);
        }
        if let Some(trace) = &e.trace_id {
            keep_earliest(&mut self.trace_id, stamp, || trace.clone());
        }
        match &e.kind {
            EventKind::Started(started) => {
                keep_earliest(&mut self.started, stamp, || started.clone());
                self.dialplan_identity
                    .absorb(stamp, &started.dialplan_identity);
                self.inbound |= started.inbound;
            }
            EventKind::Answered => {
                if self.answered.is_none_or(|s| stamp < s) {
                    self.answered = Some(stamp);
                }
            }
            EventKind::Identified(identity) => self.identified.absorb(stamp, identity),
            EventKind::RecordingAvailable { uri: Some(uri) } => {
                keep_latest(&mut self.recording, stamp, || uri.clone());
            }
            EventKind::RecordingAvailable { uri: None } => {}
            EventKind::Ended { reason } => keep_earliest(&mut self.ended, stamp, || reason.clone()),
            EventKind::TerminateRequested => self.terminate_requested = true,
            EventKind::DialogTurn(_) => self.dialog_turns = true,
            EventKind::UsageReported(usage) => {
                let key = usage_key(usage.usage_id.as_deref(), &e.body_hash);
                // One value, one form: `30` and `30.0` are equal as Decimals, so without this
                // the first to arrive would be kept and the cost's scale would follow arrival order.
                let candidate = Reported {
                    resource_type: usage.resource_type.clone(),
                    quantity: usage.quantity.normalize(),
                    service: usage.service.clone(),
                    at: e.timestamp,
                };
                // Two reports with one usageId: keep one, chosen by content, so order never matters.
                match self.usage.get(&key) {
                    Some(existing) if *existing >= candidate => {}
                    _ => {
                        self.usage.insert(key, candidate);
                        if self.usage.len() > MAX_USAGE_REPORTS_PER_CALL {
                            // The highest key goes: once out, a key never ranks low enough
                            // to come back, so every kept key has seen all its versions.
                            self.usage.pop_last();
                            self.usage_capped = true;
                        }
                    }
                }
            }
            EventKind::Other => {}
        }
    }

    pub fn fold<'a>(events: impl IntoIterator<Item = &'a CallEvent>) -> Self {
        let mut state = CallState::default();
        for e in events {
            state.apply(e);
        }
        state
    }

    pub fn is_empty(&self) -> bool {
        self.first_seen.is_none()
    }

    pub fn phase(&self) -> Phase {
        if self.ended.is_some() {
            Phase::Ended
        } else if self.is_answered() {
            Phase::Answered
        } else {
            Phase::Ringing
        }
    }

    pub fn is_ended(&self) -> bool {
        self.ended.is_some()
    }

    pub fn trace_id(&self) -> Option<&str> {
        self.trace_id.as_ref().map(|r| r.value.as_str())
    }

    /// Answered: an explicit `call.answered`, or media evidence (a recording or a dialog turn),
    /// since some producers never sent `call.answered`.
    fn is_answered(&self) -> bool {
        self.answered.is_some() || self.recording.is_some() || self.dialog_turns
    }

    /// The record this state stands for. Deterministic in (state, prices).
    pub fn record(&self, call_id: &str, prices: &PriceBook) -> CallRecord {
        self.record_and_usage(call_id, prices).0
    }

    /// The record and the call's usage lines (`usage_lines`), whose priced costs the record's
    /// `total_cost` sums. Deterministic in (state, prices).
    pub fn record_and_usage(
        &self,
        call_id: &str,
        prices: &PriceBook,
    ) -> (CallRecord, Vec<UsageLine>) {
        let start = self.started.as_ref().map(|r| r.stamp).or(self.first_seen);
        let start_time = start.map(|s| s.at);
        let answer_time = self.answered.map(|s| s.at);
        let end_time = self.ended.as_ref().map(|r| r.stamp.at);
        let answered = self.is_answered();
        let reason = self.ended.as_ref().and_then(|r| r.value.clone());

        let seconds = |from: DateTime<Utc>, to: DateTime<Utc>| {
            i32::try_from((to - from).num_seconds().max(0)).unwrap_or(i32::MAX)
        };
        let billable_seconds = match (answer_time, end_time) {
            (Some(a), Some(e)) => Some(seconds(a, e)),
            _ => None,
        };
        let duration_seconds = match (answer_time, start_time, end_time) {
            (Some(a), _, Some(e)) => Some(seconds(a, e)),
            (None, Some(s), Some(e)) => Some(seconds(s, e)),
            _ => None,
        };
        let disposition = disposition(answered, reason.as_deref());
        let hangup_source = hangup_source(
            reason.as_deref(),
            self.terminate_requested && end_time.is_some(),
        );

        // The identification first, the dialplan where it says nothing: field by field.
        let (identified, dialplan) = (&self.identified, &self.dialplan_identity);
        let user_id = Known::value(&identified.user_id)
            .or(Known::value(&dialplan.user_id))
            .copied();
        let contact_id = Known::value(&identified.contact_id)
            .or(Known::value(&dialplan.contact_id))
            .copied();
        let tenant_id = Known::value(&identified.tenant_id)
            .or(Known::value(&dialplan.tenant_id))
            .cloned();

        let mut inferred = Vec::new();
        if start.is_some_and(|s| s.inferred) || (self.started.is_none() && start.is_some()) {
            inferred.push("start");
        }
        if self.answered.is_some_and(|s| s.inferred) {
            inferred.push("answer");
        }
        if self.ended.as_ref().is_some_and(|r| r.stamp.inferred) {
            inferred.push("end");
        }

        let started = self.started.as_ref().map(|r| &r.value);
        let usage = self.usage_lines(start_time, end_time, billable_seconds, prices);
        let total = total_cost(&usage);
        let priced =
            |l: &UsageLine| start_time.and_then(|at| prices.price_at(&l.resource_type, at));
        let overflow = usage
            .iter()
            .any(|l| l.cost.is_none() && priced(l).is_some())
            || (total.is_none() && usage.iter().any(|l| l.cost.is_some()));
        let unfit = |c: &Option<Decimal>| c.is_some_and(|c| !fits_numeric(c, COST_COLUMN));
        let anomalies: Vec<&str> = [
            overflow,
            usage.iter().any(|l| unfit(&l.cost)) || unfit(&total),
            usage
                .iter()
                .any(|l| !fits_numeric(l.quantity, QUANTITY_COLUMN)),
            self.usage_capped,
        ]
        .into_iter()
        .zip(ANOMALIES)
        .filter_map(|(found, name)| found.then_some(name))
        .collect();
        let record = CallRecord {
            call_id: call_id.to_owned(),
            trace_id: self.trace_id().map(str::to_owned),
            user_id,
            contact_id,
            tenant_id,
            start_time,
            answer_time,
            end_time,
            duration_seconds,
            billable_seconds,
            status: if end_time.is_some() {
                Status::Completed
            } else {
                Status::TimedOut
            },
            disposition,
            recording_url: self.recording.as_ref().map(|r| r.value.clone()),
            total_cost: total,
            direction: self.inbound.then(|| "INBOUND".to_owned()),
            caller_number: started.and_then(|s| s.caller_number.clone()),
            callee_number: started.and_then(|s| s.callee_number.clone()),
            sip_hangup_cause: sip_code(answered, reason.as_deref()),
            end_reason: reason,
            hangup_source,
            inferred_times: (!inferred.is_empty()).then(|| inferred.join(",")),
            anomalies: (!anomalies.is_empty()).then(|| anomalies.join(",")),
        };
        (record, usage)
    }

    /// One line per usage report (each counted once), plus the telephony minutes of an
    /// answered call that ended (billable seconds rounded up to whole minutes) unless a producer
    /// reported them itself. Each is priced at the unit price in force at the call's start.
    fn usage_lines(
        &self,
        start: Option<DateTime<Utc>>,
        end: Option<DateTime<Utc>>,
        billable_seconds: Option<i32>,
        prices: &PriceBook,
    ) -> Vec<UsageLine> {
        let price = |resource: &str, quantity: Decimal| {
            let unit = prices.price_at(resource, start?)?;
            // Checked: a quantity no real usage reaches leaves the line unpriced, never a panic.
            unit.checked_mul(quantity)
                .map(|c| c.round_dp(COST_DECIMALS))
        };
        let mut lines: Vec<UsageLine> = self
            .usage
            .iter()
            .map(|(key, r)| UsageLine {
                key: key.clone(),
                service: r
                    .service
                    .clone()
                    .unwrap_or_else(|| UNKNOWN_SERVICE.to_owned()),
                resource_type: r.resource_type.clone(),
                quantity: r.quantity,
                cost: price(&r.resource_type, r.quantity),
                at: r.at,
            })
            .collect();
        let telephony_reported = lines.iter().any(|l| l.resource_type == TELEPHONY_MINUTE);
        if !telephony_reported && let (Some(secs), Some(end)) = (billable_seconds, end) {
            let minutes = Decimal::from((i64::from(secs) + 59) / 60);
            lines.push(UsageLine {
                key: TELEPHONY_KEY.to_owned(),
                service: TELEPHONY_SERVICE.to_owned(),
                resource_type: TELEPHONY_MINUTE.to_owned(),
                quantity: minutes,
                cost: price(TELEPHONY_MINUTE, minutes),
                at: end,
            });
        }
        lines
    }
}

/// Decimal places of a cost (`numeric(10,5)` in `calls` and `usage_records`).
const COST_DECIMALS: u32 = 5;

/// The service named on a usage line whose report named none.
pub const UNKNOWN_SERVICE: &str = "unknown";
/// The service named on the telephony-minute line, as the platform's readers know it.
pub const TELEPHONY_SERVICE: &str = "telephony-core";
/// The usage key of the telephony-minute line the service adds (report keys start with `id:`,
/// `id-sha256:` or `hash:`).
pub const TELEPHONY_KEY: &str = "telephony";

/// One line of a call's usage (`usage_records`): a usage report counted once, or the call's
/// telephony minutes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageLine {
    /// Identity of the line within the call (`usage_key`).
    pub key: String,
    pub service: String,
    pub resource_type: String,
    pub quantity: Decimal,
    /// Quantity times the unit price at the call's start; None when no price is known (or the
    /// product is beyond any real cost).
    pub cost: Option<Decimal>,
    /// When the usage was reported; for telephony minutes, the call's end.
    pub at: DateTime<Utc>,
}

/// The sum of the lines' priced costs; None when none is priced (or the sum is beyond any real
/// cost).
fn total_cost(lines: &[UsageLine]) -> Option<Decimal> {
    let mut priced = lines.iter().filter_map(|l| l.cost).peekable();
    priced.peek()?;
    priced.try_fold(Decimal::ZERO, Decimal::checked_add)
}

/// Longest usage key: `usage_records.usage_key` is a varchar(255).
pub const MAX_USAGE_KEY_CHARS: usize = 255;

/// Identity of a usage report: its `usageId`, or its body when it has none. A `usageId` too
/// long for the key's column is named by its SHA-256 instead, so that the key always fits and
/// two such ids stay two keys.
pub fn usage_key(usage_id: Option<&str>, body_hash: &[u8; 32]) -> String {
    const ID_PREFIX: &str = "id:";
    let hex = |bytes: &[u8]| -> String { bytes.iter().map(|b| format!("{b:02x}")).collect() };
    match usage_id {
        Some(id) if ID_PREFIX.len() + id.chars().count() <= MAX_USAGE_KEY_CHARS => {
            format!("{ID_PREFIX}{id}")
        }
        Some(id) => format!("id-sha256:{}", hex(&Sha256::digest(id.as_bytes()))),
        None => format!("hash:{}", hex(body_hash)),
    }
}

/// How the call went for the caller: answered, or why not (by the end's reason).
fn disposition(answered: bool, reason: Option<&str>) -> Disposition {
    if answered {
        return Disposition::Answered;
    }
    match reason.map(str::to_ascii_lowercase).as_deref() {
        Some("busy" | "user_busy") => Disposition::Busy,
        Some("failure" | "network_failure" | "system_terminated") => Disposition::Failed,
        _ => Disposition::NoAnswer,
    }
}

/// The SIP response code of a call's end, where the events make one known: the 200 OK that
/// answered it, or the failure its end reason names (486 Busy Here, 503 Service Unavailable,
/// 500 Server Internal Error). None otherwise: the reason alone does not say which code
/// ended an unanswered call.
fn sip_code(answered: bool, reason: Option<&str>) -> Option<i32> {
    match reason.map(str::to_ascii_lowercase).as_deref() {
        Some("busy" | "user_busy") => Some(486),
        Some("network_failure") => Some(503),
        Some("failure") => Some(500),
        _ if answered && reason.is_some() => Some(200),
        _ => None,
    }
}

/// Who hung up, in the platform's values, by the end's reason: `CALLER` (the caller cleared),
/// `CALLEE` (the agent, the called side, asked for it: `terminated_by_request`, or a
/// `call.terminate.request` of an ended call whose reason does not say), `SYSTEM` (the platform
/// ended it, or the network failed).
fn hangup_source(reason: Option<&str>, terminate_requested: bool) -> Option<String> {
    match reason {
        Some("normal_clearing_by_user") => Some("CALLER"),
        Some("terminated_by_request") => Some("CALLEE"),
        Some("system_terminated" | "network_failure" | "failure") => Some("SYSTEM"),
        _ if terminate_requested => Some("CALLEE"),
        _ => None,
    }
    .map(str::to_owned)
}
