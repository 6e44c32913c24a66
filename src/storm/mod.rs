//! `cdr-service storm`: a synthetic event storm for load tests, published to the configured
//! exchange with publisher confirms, optionally verified record by record.
//!
//! - [`generate`]: the pure, seeded generator. Every call of the storm and its ground truth
//!   (the expected record by the merge rules: `CallState::fold` over the call's distinct
//!   bodies, decoded as the service decodes them).
//! - [`publish`]: pipelined publisher confirms, rate limiting, progress bar.
//! - [`verify`]: waits for the records and compares each with its ground truth.
//!
//! Ground truth and receive times: an event without timestamp stands on its receive time,
//! which the generator cannot know. The producers' timestamp-less forms (EVENTS.md) are
//! `call.started` from the typed producer, `call.terminate.request` and the alias
//! `user.created.for_call`. The last two are generated only where their time cannot change
//! the record (the call always has a `call.started`; an alias identification is the call's only
//! identification), and the generator proves it per call by folding with two receive times far
//! apart. A call whose `call.started` has no timestamp is folded again at verification, with
//! the receive time the row shows (`start_time`, when `inferred_times` says `start`): so every
//! other field is still compared exactly, the start time is checked to lie within the storm's
//! own publish window, and the duration may differ by one second (the row keeps microseconds).

pub mod generate;
pub mod publish;
pub mod verify;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clap::{Args, Parser};
use serde_json::json;

use crate::config::Settings;
use crate::event::Limits;
pub use generate::{DurationDist, Message, MessageKind, PoisonClass, Storm, generate};

/// Options of `cdr-service storm`. Shares are fractions from 0 to 1.
#[derive(Debug, Clone, Args)]
pub struct StormOptions {
    /// Number of synthetic calls.
    #[arg(long, default_value_t = 1000)]
    pub calls: usize,
    /// Calls per second (each call's events are paced with it); 0 publishes as fast as the
    /// broker confirms. Also spaces the calls' timestamps (10 calls/s of timeline when 0).
    #[arg(long, default_value_t = 0.0, value_parser = non_negative)]
    pub rate: f64,
    /// Talk time of answered calls: `exp:MEAN`, `uniform:MIN..MAX` or `fixed:D`
    /// (humantime durations, e.g. `exp:90s`, `uniform:10s..5m`).
    #[arg(long, default_value = "exp:90s")]
    pub duration: DurationDist,
    /// Share of calls whose caller is identified (`user.identified.for_call` or an alias; half
    /// of them also matched by the dialplan).
    #[arg(long, default_value_t = 0.6, value_parser = share)]
    pub identified: f64,
    /// Share of calls answered (the others ring and end busy, failed or unanswered).
    #[arg(long, default_value_t = 0.8, value_parser = share)]
    pub answered: f64,
    /// Share of answered calls with a recording.
    #[arg(long, default_value_t = 0.7, value_parser = share)]
    pub recording: f64,
    /// Share of answered calls with dialog turns (1 to 6).
    #[arg(long, default_value_t = 0.5, value_parser = share)]
    pub dialog: f64,
    /// Share of answered calls with usage reports (1 to 4).
    #[arg(long, default_value_t = 0.5, value_parser = share)]
    pub usage: f64,
    /// Reorder window, in calls: each event of a call is published at a random point among
    /// the publishes of the next N calls, so a call's events come in any order and interleaved
    /// with its neighbours' (0: in order, one call after another).
    #[arg(long, default_value_t = 50)]
    pub reorder_window: usize,
    /// Share of messages published twice (exact redelivery), and of calls with a second
    /// `call.started` a little later (a duplicate INVITE: a distinct event).
    #[arg(long, default_value_t = 0.05, value_parser = share)]
    pub duplicates: f64,
    /// Share of calls whose `call.ended` never comes: TIMED_OUT after tracker.idle_timeout.
    #[arg(long, default_value_t = 0.0, value_parser = share)]
    pub missing_end: f64,
    /// Share of ended calls with a late event (recording or identification) published after
    /// the records were written (see --late-delay).
    #[arg(long, default_value_t = 0.1, value_parser = share)]
    pub late: f64,
    /// Poison messages, as a share of the main phase's messages: every bad-input class in turn
    /// (oversize, invalid UTF-8, too deep, not JSON, not an object, missing or invalid event
    /// type, missing or invalid call id, bad timestamp, NUL character). Dead-lettered.
    #[arg(long, default_value_t = 0.0, value_parser = share)]
    pub poison: f64,
    /// Share of events sent in a non-canonical producer form (EVENTS.md): Go or fixed-digit
    /// timestamps, no content type, routing key "", no traceId, camelCase/snake_case/URI keys,
    /// no dialplan, null or empty RTP address, no timestamp, event-name aliases, no reason, no
    /// usageId, extra keys; plus 255-character Call-IDs, calls without `call.answered` and
    /// unknown call-scoped events.
    #[arg(long, default_value_t = 0.3, value_parser = share)]
    pub variants: f64,
    /// Random seed: the same seed and options give the same storm, byte for byte.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Timestamp of the first call (RFC 3339), or `now` (printed, so the storm can be replayed).
    #[arg(long, default_value = "2025-09-24T10:00:00Z", value_parser = base_time)]
    pub base_time: DateTime<Utc>,
    /// Prefix of the storm's Call-IDs (default: `storm-SEED-FINGERPRINT`, derived from the
    /// options, so different storms never share calls and a replay reuses them).
    #[arg(long, value_parser = call_id_prefix)]
    pub call_id_prefix: Option<String>,
    /// Publishes awaiting their broker confirm at once.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub in_flight: u32,
    /// Pause before the late phase, after the service's queue has drained (default:
    /// tracker.linger + 1s, so the calls' records are written first).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub late_delay: Option<Duration>,
    /// Wait for the records and check every one against the storm's ground truth; exit
    /// non-zero on any mismatch or missing record.
    #[arg(long)]
    pub verify: bool,
    /// How long --verify waits for the records, on top of the linger, or of
    /// tracker.idle_timeout when some calls have no end.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    pub verify_timeout: Duration,
    /// Write a JSON summary to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Mismatches printed by --verify.
    #[arg(long, default_value_t = 10)]
    pub show_mismatches: usize,
    /// Generate and summarize the storm without publishing.
    #[arg(long)]
    pub dry_run: bool,
}

impl Default for StormOptions {
    /// The command line's defaults.
    fn default() -> Self {
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            options: StormOptions,
        }
        Wrapper::parse_from(["storm"]).options
    }
}

fn share(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not a share between 0 and 1"))
    }
}

fn non_negative(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("{v} must be 0 or more"))
    }
}

fn base_time(s: &str) -> Result<DateTime<Utc>, String> {
    if s.trim().eq_ignore_ascii_case("now") {
        return Ok(Utc::now());
    }
    crate::event::parse_timestamp(s.trim()).map_err(|e| e.to_string())
}

fn call_id_prefix(s: &str) -> Result<String, String> {
    if s.is_empty() || s.chars().count() > 200 || s.chars().any(char::is_control) {
        return Err("a prefix is 1 to 200 characters without control characters".into());
    }
    Ok(s.to_owned())
}

/// The service's limits, as the poison messages must exceed them.
pub fn limits(settings: &Settings) -> Limits {
    Limits {
        max_body_bytes: settings.ingest.max_body_bytes,
        max_json_depth: settings.ingest.max_json_depth,
    }
}

fn d(x: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_millis(x.as_millis() as u64))
}

pub async fn run(settings: &Settings, o: StormOptions) -> anyhow::Result<ExitCode> {
    let generated = Instant::now();
    let storm = generate(&o, limits(settings));
    let st = &storm.stats;
    println!(
        "storm: {} calls, {} messages ({} distinct events, {} exact duplicates, {} poison; {} held for the late phase)",
        st.calls, st.messages, st.distinct_events, st.exact_duplicates, st.poison, st.late_phase
    );
    println!(
        "  calls: {} answered, {} identified, {} with recording, {} with dialog, {} with usage, {} without end, {} with a late event, {} duplicate call.started, {} without start timestamp",
        st.answered,
        st.identified,
        st.with_recording,
        st.with_dialog,
        st.with_usage,
        st.missing_end,
        st.late_calls,
        st.duplicate_starts,
        st.inferred_start
    );
    println!(
        "  seed {}, base time {}, call ids {}-*, generated in {:?} (replay: --seed {} --base-time {})",
        storm.seed,
        crate::event::format_timestamp(storm.base_time),
        storm.call_id_prefix,
        generated.elapsed(),
        storm.seed,
        crate::event::format_timestamp(storm.base_time)
    );
    let mut report = json!({
        "seed": storm.seed,
        "base_time": crate::event::format_timestamp(storm.base_time),
        "call_id_prefix": storm.call_id_prefix,
        "options": options_json(&o),
        "storm": st,
    });
    if o.dry_run {
        write_report(&o, &report)?;
        return Ok(ExitCode::SUCCESS);
    }

    let verifier = if o.verify {
        Some(verify::Verifier::prepare(settings, &storm).await?)
    } else {
        None
    };

    let publisher =
        publish::StormPublisher::connect(&settings.amqp.url, &settings.amqp.exchange).await?;
    println!(
        "publishing to exchange {:?} on {}{}",
        settings.amqp.exchange,
        redact(&settings.amqp.url),
        if o.rate > 0.0 {
            format!(" at {} calls/s", o.rate)
        } else {
            " as fast as the broker confirms".into()
        }
    );
    let publish_started_at = Utc::now();
    let main = publisher
        .publish(&storm.main, o.rate, o.in_flight as usize, "main phase")
        .await?;
    println!(
        "main phase: {} messages ({:.1} MiB) in {:.2}s: {:.0} messages/s",
        main.messages,
        main.bytes as f64 / (1024.0 * 1024.0),
        main.elapsed.as_secs_f64(),
        main.rate()
    );
    let mut late_stats = None;
    if !storm.late.is_empty() {
        let drained = publisher
            .wait_for_drain(&settings.amqp.queue, Duration::from_secs(120))
            .await;
        let delay = o
            .late_delay
            .unwrap_or(settings.tracker.linger + Duration::from_secs(1));
        println!(
            "late phase: {} after the queue {} ({})",
            d(delay),
            settings.amqp.queue,
            if drained {
                "drained"
            } else {
                "did not drain within 2m"
            }
        );
        tokio::time::sleep(delay).await;
        let late = publisher
            .publish(&storm.late, 0.0, o.in_flight as usize, "late phase")
            .await?;
        println!(
            "late phase: {} messages in {:.2}s",
            late.messages,
            late.elapsed.as_secs_f64()
        );
        late_stats = Some(late);
    }
    let published_at = Instant::now();
    publisher.close().await;
    report["publish"] = json!({
        "main_messages": main.messages,
        "main_bytes": main.bytes,
        "main_seconds": main.elapsed.as_secs_f64(),
        "main_messages_per_second": main.rate(),
        "late_messages": late_stats.as_ref().map_or(0, |l| l.messages),
    });

    let mut code = ExitCode::SUCCESS;
    if let Some(verifier) = verifier {
        let outcome = verifier
            .run(settings, &storm, &o, publish_started_at, published_at)
            .await?;
        outcome.print(o.show_mismatches);
        report["verify"] = outcome.to_json(o.show_mismatches.max(20));
        if !outcome.passed() {
            code = ExitCode::FAILURE;
        }
    }
    write_report(&o, &report)?;
    Ok(code)
}

fn write_report(o: &StormOptions, report: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(path) = &o.report {
        std::fs::write(path, serde_json::to_vec_pretty(report)?)
            .map_err(|e| anyhow::anyhow!("cannot write the report {}: {e}", path.display()))?;
        println!("report: {}", path.display());
    }
    Ok(())
}

/// The options as the JSON report records them.
pub fn options_json(o: &StormOptions) -> serde_json::Value {
    json!({
        "calls": o.calls,
        "rate": o.rate,
        "duration": o.duration.to_string(),
        "identified": o.identified,
        "answered": o.answered,
        "recording": o.recording,
        "dialog": o.dialog,
        "usage": o.usage,
        "reorder_window": o.reorder_window,
        "duplicates": o.duplicates,
        "missing_end": o.missing_end,
        "late": o.late,
        "poison": o.poison,
        "variants": o.variants,
        "seed": o.seed,
        "in_flight": o.in_flight,
        "verify": o.verify,
    })
}

/// A URL without its password.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}
