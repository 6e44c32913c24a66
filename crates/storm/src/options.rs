//! The options of `cdr-service storm`, as clap parses them and as the JSON report records them.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Parser};
use serde_json::json;

use crate::generate::DurationDist;

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
    /// type, missing or invalid call id, bad timestamp, NUL character; a broken protobuf body,
    /// a protobuf call event without call id). Dead-lettered.
    #[arg(long, default_value_t = 0.0, value_parser = share)]
    pub poison: f64,
    /// Platform events that are not about a call, as a share of the main phase's messages:
    /// `user.created` (a protobuf GenericEvent), `dialplan.updated` (JSON without callId),
    /// `cognitive.map.updated` (protobuf) in turn. Acknowledged and counted by the service,
    /// never dead-lettered, never logged.
    #[arg(long, default_value_t = 0.0, value_parser = share)]
    pub platform_events: f64,
    /// Share of events sent as protobuf, as today's producers send them (no content type from
    /// the signaling and media services, `application/protobuf` from the agent service), the
    /// others as JSON, as older producers do; a call mixes both. Only events that today's
    /// producers send as protobuf can be: `call.started`, `call.answered`, the identification,
    /// `call.recording.available`, `call.ended`, and as `GenericEvent`s
    /// `call.terminate.request`, dialog turns and usage reports, in forms other than the JSON
    /// producers' own (see --variants). The format has a random stream of its
    /// own: the calls and their expected records are the same whatever the share.
    #[arg(long, default_value_t = 0.8, value_parser = share)]
    pub protobuf: f64,
    /// Share of events sent in a non-canonical producer form (EVENTS.md): Go or fixed-digit
    /// timestamps, no content type, routing key "", no traceId, camelCase/snake_case/URI keys,
    /// no dialplan, null or empty RTP address, no timestamp, event-name aliases, no reason, no
    /// usageId, extra keys; plus 255-character Call-IDs, calls without `call.answered` and
    /// unknown call-scoped events. The forms only JSON producers have (the timestamp strings,
    /// no content type, routing key "", no traceId, the key spellings, extra keys, the dotted
    /// alias) always go out as JSON.
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
    cdr_core::event::parse_timestamp(s.trim()).map_err(|e| e.to_string())
}

fn call_id_prefix(s: &str) -> Result<String, String> {
    if s.is_empty() || s.chars().count() > 200 || s.chars().any(char::is_control) {
        return Err("a prefix is 1 to 200 characters without control characters".into());
    }
    Ok(s.to_owned())
}

/// The service's limits, as the poison messages must exceed them.
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
        "platform_events": o.platform_events,
        "protobuf": o.protobuf,
        "variants": o.variants,
        "seed": o.seed,
        "in_flight": o.in_flight,
        "verify": o.verify,
    })
}
