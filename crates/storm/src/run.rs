//! `cdr-service storm`: generate the storm, publish it (the main phase, then the late phase once
//! the service's queue has drained), verify the records, write the report.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use cdr_core::event::format_timestamp;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::publish::{PublishStats, StormPublisher};
use crate::{Storm, StormOptions, Target, generate, options_json, verify};

/// Runs the command; exits with failure when `--verify` finds a wrong or missing record.
pub async fn run(target: &dyn Target, o: StormOptions) -> anyhow::Result<ExitCode> {
    let generated = Instant::now();
    let storm = generate(&o, target.limits());
    print_storm(&storm, generated.elapsed());
    let mut report = json!({
        "seed": storm.seed,
        "base_time": format_timestamp(storm.base_time),
        "call_id_prefix": storm.call_id_prefix,
        "options": options_json(&o),
        "storm": storm.stats,
    });
    if o.dry_run {
        write_report(&o, &report)?;
        return Ok(ExitCode::SUCCESS);
    }

    let verifier = if o.verify {
        Some(verify::Verifier::prepare(target, &storm).await?)
    } else {
        None
    };
    let Published {
        main,
        late,
        started_at,
        ended_at,
    } = publish(target, &storm, &o).await?;
    report["publish"] = json!({
        "main_messages": main.messages,
        "main_bytes": main.bytes,
        "main_seconds": main.elapsed.as_secs_f64(),
        "main_messages_per_second": main.rate(),
        "late_messages": late.as_ref().map_or(0, |l| l.messages),
    });

    let mut code = ExitCode::SUCCESS;
    if let Some(verifier) = verifier {
        let outcome = verifier
            .run(target, &storm, &o, started_at, ended_at)
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

/// What was generated, and how to replay it.
fn print_storm(storm: &Storm, took: Duration) {
    let st = &storm.stats;
    println!(
        "storm: {} calls, {} messages ({} distinct events, {} exact duplicates, {} poison, {} platform events; {} held for the late phase)",
        st.calls,
        st.messages,
        st.distinct_events,
        st.exact_duplicates,
        st.poison,
        st.platform_events,
        st.late_phase
    );
    let formats: Vec<String> = st
        .messages_by_format
        .iter()
        .map(|(format, n)| format!("{n} {format}"))
        .collect();
    println!("  messages by format: {}", formats.join(", "));
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
        format_timestamp(storm.base_time),
        storm.call_id_prefix,
        took,
        storm.seed,
        format_timestamp(storm.base_time)
    );
}

/// What publishing a storm did.
struct Published {
    main: PublishStats,
    late: Option<PublishStats>,
    /// Just before the first publish: receive times the service infers are after it.
    started_at: DateTime<Utc>,
    /// Once the last publish was confirmed.
    ended_at: Instant,
}

/// Publishes the main phase, then, when the storm has one, the late phase: after the service's
/// queue has drained and `--late-delay` (by default the linger and a second) has passed, so
/// that the calls' records are written before their late events come.
async fn publish(
    target: &dyn Target,
    storm: &Storm,
    o: &StormOptions,
) -> anyhow::Result<Published> {
    let publisher = StormPublisher::connect(target.amqp_url(), target.exchange()).await?;
    println!(
        "publishing to exchange {:?} on {}{}",
        target.exchange(),
        cdr_core::redact::redact(target.amqp_url()),
        if o.rate > 0.0 {
            format!(" at {} calls/s", o.rate)
        } else {
            " as fast as the broker confirms".into()
        }
    );
    let started_at = Utc::now();
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
            .wait_for_drain(target.queue(), Duration::from_secs(120))
            .await;
        let delay = o
            .late_delay
            .unwrap_or(target.linger() + Duration::from_secs(1));
        println!(
            "late phase: {} after the queue {} ({})",
            humantime::format_duration(Duration::from_millis(delay.as_millis() as u64)),
            target.queue(),
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
    let ended_at = Instant::now();
    publisher.close().await;
    Ok(Published {
        main,
        late: late_stats,
        started_at,
        ended_at,
    })
}

fn write_report(o: &StormOptions, report: &Value) -> anyhow::Result<()> {
    if let Some(path) = &o.report {
        std::fs::write(path, serde_json::to_vec_pretty(report)?)
            .map_err(|e| anyhow::anyhow!("cannot write the report {}: {e}", path.display()))?;
        println!("report: {}", path.display());
    }
    Ok(())
}
