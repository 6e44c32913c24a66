//! The report as a markdown table (`storm-report.md`), with a line on the storm under it.

use std::fmt::Write as _;

use crate::PREFETCH;
use crate::cpu::CpuShares;
use crate::report::{Report, json_text};

/// The report's table and its storm line.
pub fn markdown(r: &Report) -> String {
    let mut md = String::new();
    drain_rows(&mut md, r);
    format_rows(&mut md, r);
    steady_rows(&mut md, r);
    cpu_rows(&mut md, r);
    let _ = writeln!(
        md,
        "\nStorm: {} calls, {} messages ({} distinct events); seed baseline on the first {} of them; \
         steady state {} calls ({} messages); mode `{}`.",
        count(r.storm.calls),
        count(r.storm.messages),
        count(r.storm.distinct_events),
        count(r.seed.seed_baseline_events),
        count(r.steady.steady_calls),
        count(r.steady.steady_messages),
        r.mode,
    );
    md
}

/// The table's head and the drains' rows, down to the records.
fn drain_rows(md: &mut String, r: &Report) {
    let (b, s, f) = (&r.broker, &r.service, &r.floor);
    let service_rounds: Vec<Option<f64>> = r.rounds.drain_rounds.iter().map(|x| x.ratio).collect();
    let service_note = rounds_note(
        &service_rounds,
        ", each against the broker drains on either side of it",
    );
    let floor_note = rounds_note(&f.log_floor_round_ratios, "");
    let _ = writeln!(
        md,
        "| measure | value |\n| --- | --- |\n\
         | broker drain (do-nothing consumer, prefetch {}, multiple acks): mean of a run before and one after the service drain | {} events/s ({} and {}) |\n\
         | service drain (release binary, from process start to every record written) | {} events/s |\n\
         | service drain / broker drain{} | {} |\n\
         | service ingest rate (first to last event logged), of the broker drain | {} events/s, {} |\n\
         | log floor (decode, append to the event log, ack after each commit; nothing after the log), of the broker drains{} | {} events/s, {} |\n\
         | drain ratio a service ingesting at the log floor would reach with its start-up and the {} ms linger, its other writes free (an upper bound) | {} |\n\
         | seed baseline (per event: insert + upsert, autocommit, ack each) | {} events/s |\n\
         | speedup vs seed | {}x |\n\
         | records verified / mismatched / missing (every round) | {} / {} / {} |",
        PREFETCH,
        fixed(b.broker_drain_events_per_s, 0),
        fixed(b.broker_drain_runs_events_per_s[0], 0),
        fixed(b.broker_drain_runs_events_per_s[1], 0),
        fixed(s.service_drain_events_per_s, 0),
        service_note,
        fixed(s.drain_ratio_vs_broker, 2),
        fixed(s.service_ingest_events_per_s, 0),
        fixed(s.service_ingest_ratio_vs_broker, 2),
        floor_note,
        fixed(f.log_floor_events_per_s, 0),
        fixed(f.log_floor_ratio_vs_broker, 2),
        fixed(Some(r.steady.linger_ms), 0),
        fixed(f.drain_ratio_log_floor_bound, 2),
        fixed(r.seed.seed_baseline_events_per_s, 0),
        fixed(r.seed.speedup_vs_seed, 1),
        count(r.records.records_verified),
        count(r.records.records_mismatched),
        count(r.records.records_missing),
    );
}

/// The wire formats' rows: the default mix against the all-JSON storm.
fn format_rows(md: &mut String, r: &Report) {
    let f = &r.formats;
    let _ = writeln!(
        md,
        "| service drain, all-JSON storm / default mix ({} of its messages protobuf), back to back | {} / {} events/s |\n\
         | default mix / all-JSON drain rate | {} |\n\
         | service CPU per event, all-JSON / default mix | {} / {} µs |\n\
         | PostgreSQL CPU per event, all-JSON / default mix | {} / {} µs |\n\
         | records mismatched / missing (both format drains) | {} / {} |",
        fixed(f.mixed_protobuf_share_of_messages.map(|s| s * 100.0), 0) + "%",
        fixed(f.json_drain_events_per_s, 0),
        fixed(f.mixed_drain_events_per_s, 0),
        fixed(f.mixed_vs_json_ratio, 3),
        fixed(f.json_service_cpu_us_per_event, 1),
        fixed(f.mixed_service_cpu_us_per_event, 1),
        fixed(f.json_postgres_cpu_us_per_event, 1),
        fixed(f.mixed_postgres_cpu_us_per_event, 1),
        count(f.records_mismatched),
        count(f.records_missing),
    );
}

/// The steady state's and the memory's rows.
fn steady_rows(md: &mut String, r: &Report) {
    let (st, m) = (&r.steady, &r.memory);
    let _ = writeln!(
        md,
        "| steady state: target / achieved publish rate | {} / {} events/s |\n\
         | steady state: max queue depth while publishing | {} |\n\
         | flush latency p50 / p99 (call.ended published -> row committed, incl. {} ms linger) | {} / {} ms |\n\
         | of which call.ended published -> received by the service, p50 / p99 | {} / {} ms |\n\
         | of which received by the service -> row committed (incl. linger), p50 / p99 | {} / {} ms |\n\
         | open calls measured (resting: quiet for `rest_after`, no actor) | {} |\n\
         | RSS per open call, resting | {} bytes |\n\
         | RSS per open call with its actor (before it rests; {} calls) | {} bytes |",
        fixed(st.steady_target_events_per_s, 0),
        fixed(st.steady_events_per_s, 0),
        count(st.steady_max_queue_depth as usize),
        fixed(Some(st.linger_ms), 0),
        fixed(st.flush_latency_p50_ms, 0),
        fixed(st.flush_latency_p99_ms, 0),
        fixed(st.end_transit_p50_ms, 0),
        fixed(st.end_transit_p99_ms, 0),
        fixed(st.end_in_service_p50_ms, 0),
        fixed(st.end_in_service_p99_ms, 0),
        count(m.open_calls_measured),
        fixed(m.rss_bytes_per_open_call, 0),
        count(m.open_calls_with_actors_measured),
        fixed(m.rss_bytes_per_open_call_with_actor, 0),
    );
    let t = &r.takeover;
    let _ = writeln!(
        md,
        "| takeover: kill -9 of the active with {} open calls -> the standby holds the lease / consumes again | {} / {} s |\n\
         | takeover: calls recovered; records verified / mismatched / missing after the ends | {}; {} / {} / {} |",
        count(t.open_calls),
        fixed(t.seconds_to_lease, 2),
        fixed(t.seconds_to_consuming, 2),
        fixed(t.calls_recovered, 0),
        count(t.records_verified),
        count(t.records_mismatched),
        count(t.records_missing),
    );
    let t = &r.tls;
    let _ = writeln!(
        md,
        "| service drain through proxies, plain / TLS to both peers (verify-full, amqps, client certificates) | {} / {} events/s |\n\
         | TLS / plain drain rate; service CPU per event, plain / TLS | {}; {} / {} µs |\n\
         | records mismatched / missing (both TLS-phase drains) | {} / {} |",
        fixed(t.plain_drain_events_per_s, 0),
        fixed(t.tls_drain_events_per_s, 0),
        fixed(t.tls_vs_plain_ratio, 3),
        fixed(t.plain_service_cpu_us_per_event, 1),
        fixed(t.tls_service_cpu_us_per_event, 1),
        count(t.records_mismatched),
        count(t.records_missing),
    );
    let b = &r.bounds;
    let mib = |bytes: u64| Some(bytes as f64 / 1048576.0);
    let _ = writeln!(
        md,
        "| open-call limit {}: calls published / in memory / deferrals | {} / {} / {} |\n\
         | open-call limit: RSS idle -> with the limit reached | {} -> {} MiB ({} bytes per call in memory) |\n\
         | largest call ({} events, {} MiB of bodies) re-activated by a late event: RSS idle / peak | {} / {} MiB (in {} s) |",
        count(b.max_open_calls),
        count(b.open_calls_published),
        count(b.calls_in_memory as usize),
        fixed(b.calls_deferred, 0),
        fixed(mib(b.limit_rss_before_bytes), 1),
        fixed(mib(b.limit_rss_after_bytes), 1),
        fixed(b.limit_rss_bytes_per_call_in_memory, 0),
        count(b.largest_call_events),
        fixed(Some(b.largest_call_history_bytes as f64 / 1048576.0), 0),
        fixed(mib(b.reactivation_rss_idle_bytes), 1),
        fixed(mib(b.reactivation_rss_peak_bytes), 1),
        fixed(b.reactivation_seconds, 2),
    );
}

/// The CPU rows and the service drain's log writes.
fn cpu_rows(md: &mut String, r: &Report) {
    let (b, w) = (&r.rounds.drain_cpu_budget, &r.service.service_drain_writes);
    let _ = writeln!(
        md,
        "| CPU in the broker drains (service / postgres / rabbitmq / bench) | {}; {} |\n\
         | CPU in the log floor (service / postgres / rabbitmq / bench, the consumer) | {} |\n\
         | CPU while the service ingests (service / postgres / rabbitmq / bench) | {} |\n\
         | CPU in steady state (service / postgres / rabbitmq / bench) | {} |\n\
         | CPU per event in the service drain, from process start: service / postgres / rabbitmq (rabbitmq in the broker drains) | {} / {} / {} µs ({} µs) |\n\
         | drain ratio this CPU allows on {} cores (broker drain time / (CPU of the three / cores)) | {} |\n\
         | service drain: log batches, mean size, mean commit, share of the ingest window in commits | {}, {} events, {} ms, {:.0}% |",
        cores(&r.broker.broker_drain_cpu[0]),
        cores(&r.broker.broker_drain_cpu[1]),
        cores(&r.floor.log_floor_cpu),
        cores(&r.service.service_drain_cpu),
        cores(&r.steady.steady_cpu),
        json_text(&b.service_cpu_us_per_event),
        json_text(&b.postgres_cpu_us_per_event),
        json_text(&b.rabbitmq_cpu_us_per_event),
        json_text(&b.broker_drain_rabbitmq_cpu_us_per_event),
        r.machine.nproc,
        json_text(&b.cpu_bound_ratio),
        fixed(Some(w.log_batches), 0),
        json_text(&w.log_batch_mean_events),
        json_text(&w.log_write_mean_ms),
        w.log_write_busy_share * 100.0,
    );
}

/// A figure with `digits` decimals, a whole one with thousands separators, or "n/a".
fn fixed(x: Option<f64>, digits: usize) -> String {
    match x {
        Some(x) if digits == 0 => thousands(x.round() as i64),
        Some(x) => format!("{x:.digits$}"),
        None => "n/a".into(),
    }
}

/// A count with thousands separators.
fn count(n: usize) -> String {
    fixed(Some(n as f64), 0)
}

/// The CPU of a window: cores used by the service, PostgreSQL, RabbitMQ and the bench, and how
/// busy the machine was.
fn cores(cpu: &CpuShares) -> String {
    let c = &cpu.cores_used;
    format!(
        "{} / {} / {} / {} of {} cores ({:.0}% busy, {:.0}% stolen by the host)",
        json_text(&c.service),
        json_text(&c.postgres),
        json_text(&c.rabbitmq),
        json_text(&c.bench),
        cpu.nproc,
        cpu.machine_busy_share * 100.0,
        cpu.machine_steal_share * 100.0
    )
}

/// " (median of N rounds{how}: r1, r2, ...)" for more than one round's ratio, else nothing.
fn rounds_note(ratios: &[Option<f64>], how: &str) -> String {
    if ratios.len() < 2 {
        return String::new();
    }
    let listed: Vec<String> = ratios
        .iter()
        .map(|x| x.map_or("n/a".into(), |v| format!("{v:.2}")))
        .collect();
    format!(
        " (median of {} rounds{how}: {})",
        ratios.len(),
        listed.join(", ")
    )
}

fn thousands(n: i64) -> String {
    let s = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}
