//! `storm --verify`: waits until every call of the storm has its row in `calls` folded from all
//! of its distinct events (or a deadline), then compares every row and the call's usage lines
//! (`usage_records`) with the call's ground truth field by field, and checks that no poison message and no platform event was logged as a
//! call event, and that the dead-letter queue grew by no more than the poison: a platform event
//! that is not about a call is acknowledged, never dead-lettered.
//!
//! The wait covers how the service writes records: `tracker.linger` after a call's end, and
//! `tracker.idle_timeout` after the last event of a call without one (TIMED_OUT), both read
//! from the same settings the service uses, plus `--verify-timeout` of slack. What it found is
//! an [`Outcome`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context;
use cdr_core::merge::{CallRecord, PriceBook, UsageLine};
use chrono::{DateTime, Timelike, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use lapin::{Connection, ConnectionProperties};
use sqlx::PgPool;

use cdr_schema::row::CallRow;
use cdr_schema::usage::UsageRow;

use crate::generate::ExpectedCall;
pub use crate::outcome::{FieldDiff, Mismatch, Missing, Outcome};
use crate::publish::queue_depth;
use crate::{Storm, StormOptions, Target};

/// How many distinct bodies `queue` holds: every message taken without an ack on a channel of
/// its own, then given back as that channel closes. None if it cannot be read.
async fn distinct_messages(conn: &Connection, queue: &str) -> Option<usize> {
    let channel = conn.create_channel().await.ok()?;
    let mut bodies = HashSet::new();
    while let Ok(Some(message)) = channel
        .basic_get(
            queue.into(),
            lapin::options::BasicGetOptions { no_ack: false },
        )
        .await
    {
        bodies.insert(message.delivery.data.clone());
    }
    let _ = channel.close(200, "counted".into()).await;
    Some(bodies.len())
}

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

/// The usage lines this service wrote for `call_ids`, by call.
pub async fn load_usage(
    pool: &PgPool,
    call_ids: &[&str],
) -> Result<HashMap<String, Vec<UsageRow>>, sqlx::Error> {
    let mut by_call: HashMap<String, Vec<UsageRow>> = HashMap::new();
    for chunk in call_ids.chunks(CHUNK) {
        for line in cdr_schema::usage::by_calls(chunk).fetch_all(pool).await? {
            by_call.entry(line.call_id.clone()).or_default().push(line);
        }
    }
    Ok(by_call)
}

/// The usage lines the service must write for `lines` of a call whose row bills `tenant_id`,
/// with their times at the microseconds the database keeps, in key order.
pub fn expected_usage(
    call_id: &str,
    tenant_id: Option<&str>,
    lines: &[UsageLine],
) -> Vec<UsageRow> {
    let mut rows: Vec<UsageRow> = lines
        .iter()
        .filter_map(|l| UsageRow::from_line(call_id, tenant_id, l))
        .map(|mut r| {
            r.recorded_at = micros(Some(r.recorded_at)).unwrap_or(r.recorded_at);
            r
        })
        .collect();
    rows.sort_by(|a, b| a.usage_key.cmp(&b.usage_key));
    rows
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
    pub async fn prepare(target: &dyn Target, storm: &Storm) -> anyhow::Result<Verifier> {
        let pool = target.database().map_err(anyhow::Error::from_boxed)?;
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
        let amqp = Connection::connect(target.amqp_url(), ConnectionProperties::default())
            .await
            .ok();
        let dead_letters_before = match &amqp {
            Some(c) => queue_depth(c, target.dead_letter_queue()).await,
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
        target: &dyn Target,
        storm: &Storm,
        o: &StormOptions,
        publish_started_at: DateTime<Utc>,
        published_at: Instant,
    ) -> anyhow::Result<Outcome> {
        let wait = announce_wait(target, storm, o, published_at);
        let started = Instant::now();
        let complete_after_publish = self
            .wait_for_rows(storm, published_at, published_at + wait)
            .await?;
        let mut outcome = Outcome {
            calls: storm.calls.len(),
            correct: 0,
            mismatches: Vec::new(),
            missing: Vec::new(),
            by_outcome: BTreeMap::new(),
            poison_expected: storm.stats.poison,
            poison_leaked: Vec::new(),
            platform_expected: storm.stats.platform_events,
            platform_leaked: Vec::new(),
            dead_letter_queue: target.dead_letter_queue().to_owned(),
            dead_lettered: None,
            dead_letter_copies: None,
            complete_after_publish,
            waited: started.elapsed(),
        };
        self.compare_rows(storm, publish_started_at, &mut outcome)
            .await?;
        self.check_poison(target, storm, &mut outcome).await?;
        if let Some(conn) = self.amqp {
            let _ = conn.close(200, "bye".into()).await;
        }
        self.pool.close().await;
        Ok(outcome)
    }

    /// Waits until every row folds all of its call's distinct events, or `deadline`; how long
    /// after the last publish they all did.
    async fn wait_for_rows(
        &self,
        storm: &Storm,
        published_at: Instant,
        deadline: Instant,
    ) -> anyhow::Result<Option<Duration>> {
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
        Ok(complete_after_publish)
    }

    /// Compares every row with its ground truth.
    async fn compare_rows(
        &self,
        storm: &Storm,
        publish_started_at: DateTime<Utc>,
        outcome: &mut Outcome,
    ) -> anyhow::Result<()> {
        let prices = load_prices(&self.pool).await?;
        let ids: Vec<&str> = storm.calls.iter().map(|c| c.call_id.as_str()).collect();
        let rows: HashMap<String, CallRow> = load_rows(&self.pool, &ids)
            .await?
            .into_iter()
            .map(|r| (r.call_id.clone(), r))
            .collect();
        let usage = load_usage(&self.pool, &ids).await?;
        let now = Utc::now();
        let window = (
            publish_started_at - chrono::Duration::seconds(2),
            now + chrono::Duration::seconds(2),
        );
        for call in &storm.calls {
            let row = rows.get(&call.call_id);
            let window = if self.existing.contains(&call.call_id) {
                (DateTime::<Utc>::MIN_UTC, window.1)
            } else {
                window
            };
            let lines = usage.get(&call.call_id).map_or(&[][..], Vec::as_slice);
            let (expected, fields) = compare(call, row, lines, &prices, now, window);
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
        Ok(())
    }

    /// Poison: never a call event, always a dead letter. Platform events: never a call event,
    /// never a dead letter (the queue grows by the poison alone).
    async fn check_poison(
        &self,
        target: &dyn Target,
        storm: &Storm,
        outcome: &mut Outcome,
    ) -> anyhow::Result<()> {
        outcome.poison_leaked = self.logged(&storm.poison_call_ids).await?;
        outcome.platform_leaked = self.logged(&storm.platform_ids).await?;
        if let (Some(conn), Some(before)) = (&self.amqp, self.dead_letters_before) {
            // The dead letters were settled before the records they were published among;
            // give the count a few seconds anyway.
            let until = Instant::now() + Duration::from_secs(5);
            loop {
                let now = queue_depth(conn, target.dead_letter_queue()).await;
                outcome.dead_lettered = now.map(|n| i64::from(n) - i64::from(before));
                if outcome.dead_lettered >= Some(storm.stats.poison as i64)
                    || Instant::now() >= until
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // More than the poison: a dead letter published twice (its service killed after
            // publishing it and before acking the message, which then came again) is one
            // dead letter. Count the distinct ones.
            if let Some(grown) = outcome.dead_lettered
                && grown > storm.stats.poison as i64
                && let Some(distinct) = distinct_messages(conn, target.dead_letter_queue()).await
            {
                let distinct = distinct as i64 - i64::from(before);
                outcome.dead_letter_copies = Some(grown - distinct);
                outcome.dead_lettered = Some(distinct);
            }
        }
        Ok(())
    }

    /// Which of `ids` were logged as call ids, in `call_events` or `calls`.
    async fn logged(&self, ids: &[String]) -> anyhow::Result<Vec<String>> {
        let mut logged = Vec::new();
        for chunk in ids.chunks(CHUNK) {
            let found: Vec<String> = sqlx::query_scalar(
                "SELECT DISTINCT call_id FROM call_events WHERE call_id = ANY($1) \
                 UNION SELECT call_id FROM calls WHERE call_id = ANY($1)",
            )
            .bind(chunk)
            .fetch_all(&self.pool)
            .await?;
            logged.extend(found);
        }
        Ok(logged)
    }
}

/// How long to wait for the records, from the last publish: the linger, or the idle timeout
/// when some calls have no end, plus `--verify-timeout`. Says so, and what it waits for.
fn announce_wait(
    target: &dyn Target,
    storm: &Storm,
    o: &StormOptions,
    published_at: Instant,
) -> Duration {
    let ended = storm.calls.iter().filter(|c| c.ended).count();
    let open = storm.calls.len() - ended;
    let linger = target.linger();
    let idle = target.idle_timeout();
    let wait = if open > 0 { idle.max(linger) } else { linger } + o.verify_timeout;
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
    wait
}

/// The expected record of a call and the fields in which the row, or the call's usage lines
/// (`lines`, in key order), differ from it.
fn compare(
    call: &ExpectedCall,
    row: Option<&CallRow>,
    lines: &[UsageRow],
    prices: &PriceBook,
    now: DateTime<Utc>,
    window: (DateTime<Utc>, DateTime<Utc>),
) -> (CallRecord, Vec<FieldDiff>) {
    let Some(row) = row else {
        return (call.record(prices, now), Vec::new());
    };
    let usage_diff = |expected: &[UsageLine]| {
        let want = expected_usage(&call.call_id, row.tenant_id.as_deref(), expected);
        (want != lines).then(|| FieldDiff {
            field: "usage_records",
            expected: format!("{want:?}"),
            found: format!("{lines:?}"),
        })
    };
    if call.receive_dependent.is_none() {
        let (expected, usage) = call.record_and_usage(prices, now);
        let mut diffs = expected_row(&expected, call.distinct_events).diff(row);
        diffs.extend(usage_diff(&usage));
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
    let (expected, usage) = call.record_and_usage(prices, receive);
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
    diffs.extend(usage_diff(&usage));
    (expected, diffs)
}

async fn load_prices(pool: &PgPool) -> anyhow::Result<PriceBook> {
    let rows = cdr_schema::prices::select()
        .fetch_all(pool)
        .await
        .context("reading cost_models")?;
    Ok(PriceBook::new(rows))
}
