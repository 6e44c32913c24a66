//! `storm --verify`: waits until every call of the storm has its row in `calls` folded from all
//! of its distinct events (or a deadline), then compares every row with the call's ground truth
//! field by field, and checks that no poison message was logged as a call event.
//!
//! The wait covers how the service writes records: `tracker.linger` after a call's end, and
//! `tracker.idle_timeout` after the last event of a call without one (TIMED_OUT), both read
//! from the same settings the service uses, plus `--verify-timeout` of slack.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Timelike, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use lapin::{Connection, ConnectionProperties};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use sqlx::PgPool;

use super::generate::ExpectedCall;
use super::publish::queue_depth;
use super::{Storm, StormOptions};
use crate::config::Settings;
use crate::merge::{CallRecord, PriceBook};
use crate::row::{CallRow, FieldDiff};

/// Ids per `ANY($1)` query.
const CHUNK: usize = 5000;

/// PostgreSQL keeps microseconds.
fn micros(t: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    t.and_then(|t| t.with_nanosecond(t.nanosecond() / 1000 * 1000))
}

/// The row the service must write for `r`, folded from `event_count` distinct events, with its
/// times at the microseconds the database keeps.
pub fn expected_row(r: &CallRecord, event_count: usize) -> CallRow {
    let mut row = CallRow::from_record(r, i32::try_from(event_count).unwrap_or(i32::MAX));
    row.start_time = micros(row.start_time);
    row.answer_time = micros(row.answer_time);
    row.end_time = micros(row.end_time);
    row
}

/// The rows of `call_ids` as stored (absent calls are simply missing).
pub async fn load_rows(pool: &PgPool, call_ids: &[&str]) -> Result<Vec<CallRow>, sqlx::Error> {
    let mut rows = Vec::with_capacity(call_ids.len());
    for chunk in call_ids.chunks(CHUNK) {
        rows.extend(CallRow::by_ids(chunk).fetch_all(pool).await?);
    }
    Ok(rows)
}

#[derive(Debug, Clone)]
pub struct Mismatch {
    pub call_id: String,
    pub fields: Vec<FieldDiff>,
}

#[derive(Debug, Clone)]
pub struct Missing {
    pub call_id: String,
    /// The row's event count, when there is a row.
    pub have: Option<i32>,
    pub want: usize,
}

#[derive(Debug)]
pub struct Outcome {
    pub calls: usize,
    pub correct: usize,
    pub mismatches: Vec<Mismatch>,
    pub missing: Vec<Missing>,
    /// Expected records by status/disposition.
    pub by_outcome: BTreeMap<String, usize>,
    pub poison_expected: usize,
    /// Poison call ids found in `call_events` or `calls`.
    pub poison_leaked: Vec<String>,
    pub dead_letter_queue: String,
    /// Growth of the dead-letter queue during the storm, when it could be read.
    pub dead_lettered: Option<i64>,
    /// From the last publish to the last record complete.
    pub complete_after_publish: Option<Duration>,
    pub waited: Duration,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.mismatches.is_empty() && self.missing.is_empty() && self.poison_leaked.is_empty()
    }

    pub fn print(&self, show: usize) {
        println!(
            "verify: {} calls: {} correct, {} wrong, {} missing{}",
            self.calls,
            self.correct,
            self.mismatches.len(),
            self.missing.len(),
            match self.complete_after_publish {
                Some(t) => format!(
                    "; every record complete {:.1}s after the last publish",
                    t.as_secs_f64()
                ),
                None => format!("; gave up after {:.0}s", self.waited.as_secs_f64()),
            }
        );
        let kinds: Vec<String> = self
            .by_outcome
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        println!("  records: {}", kinds.join(", "));
        if self.poison_expected > 0 {
            println!(
                "  poison: {} messages; {}; dead-letter queue {:?} {}",
                self.poison_expected,
                if self.poison_leaked.is_empty() {
                    "none logged as a call event".to_owned()
                } else {
                    format!(
                        "{} LOGGED as call events: {:?}",
                        self.poison_leaked.len(),
                        &self.poison_leaked[..self.poison_leaked.len().min(show)]
                    )
                },
                self.dead_letter_queue,
                match self.dead_lettered {
                    Some(n) => format!("grew by {n} (expected {})", self.poison_expected),
                    None => "could not be read".to_owned(),
                }
            );
        }
        if !self.mismatches.is_empty() {
            println!(
                "first mismatches ({} of {}):",
                self.mismatches.len().min(show),
                self.mismatches.len()
            );
            for m in self.mismatches.iter().take(show) {
                println!("  {}", m.call_id);
                for f in &m.fields {
                    println!(
                        "    {}: expected {}, found {}",
                        f.field, f.expected, f.found
                    );
                }
            }
        }
        if !self.missing.is_empty() {
            println!(
                "missing records ({} of {}):",
                self.missing.len().min(show),
                self.missing.len()
            );
            for m in self.missing.iter().take(show) {
                match m.have {
                    Some(n) => println!(
                        "  {}: the row folds {n} of its {} distinct events",
                        m.call_id, m.want
                    ),
                    None => println!("  {}: no row ({} distinct events)", m.call_id, m.want),
                }
            }
        }
        println!(
            "verify: {}",
            if self.passed() { "PASSED" } else { "FAILED" }
        );
    }

    pub fn to_json(&self, limit: usize) -> Value {
        json!({
            "passed": self.passed(),
            "calls": self.calls,
            "correct": self.correct,
            "mismatched": self.mismatches.len(),
            "missing": self.missing.len(),
            "records": self.by_outcome,
            "poison_expected": self.poison_expected,
            "poison_leaked": self.poison_leaked.len(),
            "dead_letter_queue": self.dead_letter_queue,
            "dead_lettered": self.dead_lettered,
            "complete_after_publish_seconds": self.complete_after_publish.map(|d| d.as_secs_f64()),
            "waited_seconds": self.waited.as_secs_f64(),
            "first_mismatches": self.mismatches.iter().take(limit).map(|m| json!({
                "call_id": m.call_id,
                "fields": m.fields.iter().map(|f| json!({
                    "field": f.field, "expected": f.expected, "found": f.found,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "first_missing": self.missing.iter().take(limit).map(|m| json!({
                "call_id": m.call_id, "have": m.have, "want": m.want,
            })).collect::<Vec<_>>(),
        })
    }
}

/// What --verify reads before the storm is published.
pub struct Verifier {
    pool: PgPool,
    amqp: Option<Connection>,
    dead_letters_before: Option<u32>,
    /// Calls with a row before the storm (a replay): their receive times are older.
    existing: HashSet<String>,
}

impl Verifier {
    pub async fn prepare(settings: &Settings, storm: &Storm) -> anyhow::Result<Verifier> {
        let pool = crate::db::pool(&settings.database)?;
        let ids: Vec<&str> = storm.calls.iter().map(|c| c.call_id.as_str()).collect();
        let mut existing = HashSet::new();
        for chunk in ids.chunks(CHUNK) {
            let found: Vec<String> =
                sqlx::query_scalar("SELECT call_id FROM calls WHERE call_id = ANY($1)")
                    .bind(chunk)
                    .fetch_all(&pool)
                    .await
                    .context("reading `calls` (database.url; is the schema migrated?)")?;
            existing.extend(found);
        }
        if !existing.is_empty() {
            println!(
                "note: {} of the storm's calls already have rows (a replay of this seed): \
                 their events are duplicates now",
                existing.len()
            );
        }
        let amqp = Connection::connect(&settings.amqp.url, ConnectionProperties::default())
            .await
            .ok();
        let dead_letters_before = match &amqp {
            Some(c) => queue_depth(c, &settings.amqp.dead_letter_queue).await,
            None => None,
        };
        Ok(Verifier {
            pool,
            amqp,
            dead_letters_before,
            existing,
        })
    }

    pub async fn run(
        self,
        settings: &Settings,
        storm: &Storm,
        o: &StormOptions,
        publish_started_at: DateTime<Utc>,
        published_at: Instant,
    ) -> anyhow::Result<Outcome> {
        let ended = storm.calls.iter().filter(|c| c.ended).count();
        let open = storm.calls.len() - ended;
        let linger = settings.tracker.linger;
        let idle = settings.tracker.idle_timeout;
        let wait = if open > 0 { idle.max(linger) } else { linger } + o.verify_timeout;
        let deadline = published_at + wait;
        let fmt = |d: Duration| {
            humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
        };
        println!(
            "waiting up to {} for {} records: {ended} ended calls (written tracker.linger = {} after their end){}",
            fmt(wait.saturating_sub(published_at.elapsed())),
            storm.calls.len(),
            fmt(linger),
            if open > 0 {
                format!(
                    ", {open} calls without an end (TIMED_OUT tracker.idle_timeout = {} after their last event)",
                    fmt(idle)
                )
            } else {
                String::new()
            }
        );
        if open > 0 && idle > Duration::from_secs(600) {
            println!(
                "note: with tracker.idle_timeout = {}, the calls without an end take that long; \
                 run the service with a shorter CDR__TRACKER__IDLE_TIMEOUT, or use --missing-end 0",
                fmt(idle)
            );
        }

        // Wait until every row folds all of its call's distinct events.
        let started = Instant::now();
        let mut pending: HashMap<&str, usize> = storm
            .calls
            .iter()
            .map(|c| (c.call_id.as_str(), c.distinct_events))
            .collect();
        let bar = ProgressBar::new(storm.calls.len() as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>11} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} records {per_sec:0}",
            )
            .expect("a valid template"),
        );
        bar.set_message("verify");
        let mut last_line = Instant::now();
        let mut complete_after_publish = None;
        loop {
            let ids: Vec<&str> = pending.keys().copied().collect();
            for chunk in ids.chunks(CHUNK) {
                let rows: Vec<(String, i32)> = sqlx::query_as(
                    "SELECT call_id, event_count FROM calls WHERE call_id = ANY($1)",
                )
                .bind(chunk)
                .fetch_all(&self.pool)
                .await?;
                for (id, n) in rows {
                    if let Some(&want) = pending.get(id.as_str())
                        && usize::try_from(n).unwrap_or(0) >= want
                    {
                        pending.remove(id.as_str());
                    }
                }
            }
            bar.set_position((storm.calls.len() - pending.len()) as u64);
            if pending.is_empty() {
                complete_after_publish = Some(published_at.elapsed());
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
            if bar.is_hidden() && last_line.elapsed() >= Duration::from_secs(5) {
                eprintln!(
                    "verify: {}/{} records complete",
                    storm.calls.len() - pending.len(),
                    storm.calls.len()
                );
                last_line = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        bar.finish_and_clear();

        // Compare every row with its ground truth.
        let prices = load_prices(&self.pool).await?;
        let ids: Vec<&str> = storm.calls.iter().map(|c| c.call_id.as_str()).collect();
        let rows: HashMap<String, CallRow> = load_rows(&self.pool, &ids)
            .await?
            .into_iter()
            .map(|r| (r.call_id.clone(), r))
            .collect();
        let now = Utc::now();
        let window = (
            publish_started_at - chrono::Duration::seconds(2),
            now + chrono::Duration::seconds(2),
        );
        let mut outcome = Outcome {
            calls: storm.calls.len(),
            correct: 0,
            mismatches: Vec::new(),
            missing: Vec::new(),
            by_outcome: BTreeMap::new(),
            poison_expected: storm.stats.poison,
            poison_leaked: Vec::new(),
            dead_letter_queue: settings.amqp.dead_letter_queue.clone(),
            dead_lettered: None,
            complete_after_publish,
            waited: started.elapsed(),
        };
        for call in &storm.calls {
            let row = rows.get(&call.call_id);
            let window = if self.existing.contains(&call.call_id) {
                (DateTime::<Utc>::MIN_UTC, window.1)
            } else {
                window
            };
            let (expected, fields) = compare(call, row, &prices, now, window);
            *outcome
                .by_outcome
                .entry(format!(
                    "{}/{}",
                    expected.status.as_str(),
                    expected.disposition.as_str()
                ))
                .or_default() += 1;
            match row {
                Some(r) if usize::try_from(r.event_count).unwrap_or(0) < call.distinct_events => {
                    outcome.missing.push(Missing {
                        call_id: call.call_id.clone(),
                        have: Some(r.event_count),
                        want: call.distinct_events,
                    })
                }
                None => outcome.missing.push(Missing {
                    call_id: call.call_id.clone(),
                    have: None,
                    want: call.distinct_events,
                }),
                Some(_) if fields.is_empty() => outcome.correct += 1,
                Some(_) => outcome.mismatches.push(Mismatch {
                    call_id: call.call_id.clone(),
                    fields,
                }),
            }
        }

        // Poison: never a call event, always a dead letter.
        for chunk in storm.poison_call_ids.chunks(CHUNK) {
            let leaked: Vec<String> = sqlx::query_scalar(
                "SELECT DISTINCT call_id FROM call_events WHERE call_id = ANY($1) \
                 UNION SELECT call_id FROM calls WHERE call_id = ANY($1)",
            )
            .bind(chunk)
            .fetch_all(&self.pool)
            .await?;
            outcome.poison_leaked.extend(leaked);
        }
        if let (Some(conn), Some(before)) = (&self.amqp, self.dead_letters_before) {
            // The dead letters were settled before the records they were published among;
            // give the count a few seconds anyway.
            let until = Instant::now() + Duration::from_secs(5);
            loop {
                let now = queue_depth(conn, &settings.amqp.dead_letter_queue).await;
                outcome.dead_lettered = now.map(|n| i64::from(n) - i64::from(before));
                if outcome.dead_lettered >= Some(storm.stats.poison as i64)
                    || Instant::now() >= until
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        if let Some(conn) = self.amqp {
            let _ = conn.close(200, "bye".into()).await;
        }
        self.pool.close().await;
        Ok(outcome)
    }
}

/// The expected record of a call and the fields in which the row differs from it.
fn compare(
    call: &ExpectedCall,
    row: Option<&CallRow>,
    prices: &PriceBook,
    now: DateTime<Utc>,
    window: (DateTime<Utc>, DateTime<Utc>),
) -> (CallRecord, Vec<FieldDiff>) {
    let Some(row) = row else {
        return (call.record(prices, now), Vec::new());
    };
    if call.receive_dependent.is_none() {
        let expected = call.record(prices, now);
        let diffs = expected_row(&expected, call.distinct_events).diff(row);
        return (expected, diffs);
    }
    // The call's start stands on a receive time: the one the row shows, if it says so.
    let inferred_start = row
        .inferred_times
        .as_deref()
        .is_some_and(|s| s.split(',').any(|p| p == "start"));
    let receive = match (inferred_start, row.start_time) {
        (true, Some(t)) => t,
        _ => now,
    };
    let expected = call.record(prices, receive);
    let mut want = expected_row(&expected, call.distinct_events);
    let mut diffs = Vec::new();
    if inferred_start
        && let Some(t) = row.start_time
        && (t < window.0 || t > window.1)
    {
        diffs.push(FieldDiff {
            field: "start_time (a receive time)",
            expected: format!("within {} .. {}", window.0, window.1),
            found: t.to_string(),
        });
    }
    // The row keeps microseconds of a receive time the service knew to the nanosecond.
    if let (Some(a), Some(b)) = (want.duration_seconds, row.duration_seconds)
        && (a - b).abs() <= 1
    {
        want.duration_seconds = row.duration_seconds;
    }
    diffs.extend(want.diff(row));
    (expected, diffs)
}

async fn load_prices(pool: &PgPool) -> anyhow::Result<PriceBook> {
    let rows: Vec<(String, DateTime<Utc>, Decimal)> =
        sqlx::query_as("SELECT resource_type, start_date, cost_per_unit::numeric FROM cost_models")
            .fetch_all(pool)
            .await
            .context("reading cost_models")?;
    Ok(PriceBook::new(rows))
}
