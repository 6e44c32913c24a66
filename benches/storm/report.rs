//! The report: built once from every phase's results, then written as JSON
//! (`storm-report.json`) and as a markdown table (`storm-report.md`, printed too).
//!
//! In the JSON the phases' figures stand side by side at the top level (`flatten`), with
//! `machine`, `storm`, `service_settings`, the CPU readings, the writes, the drain rounds and
//! the memory runs as objects; every object's keys are sorted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::Utc;
use serde::Serialize;

use crate::bounds::Bounds;
use crate::clock::Drain;
use crate::cpu::{CpuBudget, CpuShares, Machine};
use crate::drains::Rounds;
use crate::env::Writes;
use crate::formats::Formats;
use crate::memory::{Memory, MemoryFigures};
use crate::stats::{finite, percentile, round};
use crate::steady::Steady;
use crate::takeover::Takeover;
use crate::tls::{Tls, TlsFigures};
use crate::{ENV_PREFIX, LINGER, PREFETCH, Storm, StormOptions, options_json};

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub generated_at: String,
    pub machine: Machine,
    pub storm: StormFigures,
    pub service_settings: ServiceSettings,
    #[serde(flatten)]
    pub broker: BrokerFigures,
    #[serde(flatten)]
    pub service: ServiceFigures,
    #[serde(flatten)]
    pub floor: FloorFigures,
    #[serde(flatten)]
    pub rounds: RoundFigures,
    pub formats: FormatFigures,
    #[serde(flatten)]
    pub records: RecordFigures,
    #[serde(flatten)]
    pub seed: SeedFigures,
    #[serde(flatten)]
    pub steady: SteadyFigures,
    #[serde(flatten)]
    pub memory: OpenCallFigures,
    pub takeover: Takeover,
    pub bounds: Bounds,
    pub tls: TlsFigures,
}

/// The drain storm.
#[derive(Debug, Serialize)]
pub struct StormFigures {
    pub options: serde_json::Value,
    pub calls: usize,
    pub messages: usize,
    pub distinct_events: usize,
    pub exact_duplicates: usize,
    pub events_per_call: f64,
    pub events_by_type: BTreeMap<String, usize>,
}

/// How the service was run.
#[derive(Debug, Serialize)]
pub struct ServiceSettings {
    pub prefetch: u16,
    pub linger: String,
    pub log_level: &'static str,
    pub other: &'static str,
    /// `CDR__*` variables of the bench's own environment, which the service inherits (e.g.
    /// CDR__RUNTIME__WORKER_THREADS=2 for a comparison run).
    pub environment_overrides: BTreeMap<String, String>,
}

/// The broker drains of the median round, before and after its service drain.
#[derive(Debug, Serialize)]
pub struct BrokerFigures {
    pub broker_publish_events_per_s: Option<f64>,
    /// The mean of the two runs' rates.
    pub broker_drain_events_per_s: Option<f64>,
    pub broker_drain_runs_events_per_s: [Option<f64>; 2],
    pub broker_drain_seconds: [Option<f64>; 2],
    pub broker_drain_cpu: [CpuShares; 2],
}

/// The service drain of the median round.
#[derive(Debug, Serialize)]
pub struct ServiceFigures {
    pub service_publish_events_per_s: Option<f64>,
    pub service_drain_events_per_s: Option<f64>,
    pub service_drain_seconds: Option<f64>,
    pub service_startup_seconds: Option<f64>,
    pub service_ingest_events_per_s: Option<f64>,
    pub service_ingest_seconds: Option<f64>,
    pub drain_ratio_vs_broker: Option<f64>,
    pub service_ingest_ratio_vs_broker: Option<f64>,
    pub service_drain_cpu: CpuShares,
    pub service_drain_cpu_from_start: CpuShares,
    pub service_drain_writes: Writes,
}

/// The log floor of the median floor round.
#[derive(Debug, Serialize)]
pub struct FloorFigures {
    pub log_floor_events_per_s: Option<f64>,
    pub log_floor_seconds: Option<f64>,
    pub log_floor_cpu: CpuShares,
    pub log_floor_ratio_vs_broker: Option<f64>,
    pub log_floor_round_ratios: Vec<Option<f64>>,
    /// The drain ratio of a service that ingested at the floor's rate, started as fast as that
    /// round's service did and wrote its last records a linger after its last event, its other
    /// writes free: above what this machine allows a service that keeps the log and the linger.
    pub drain_ratio_log_floor_bound: Option<f64>,
}

/// Every drain round, and the median round's CPU budget.
#[derive(Debug, Serialize)]
pub struct RoundFigures {
    pub drain_rounds: Vec<DrainRound>,
    /// From 1.
    pub drain_median_round: usize,
    pub drain_ratio_min: Option<f64>,
    pub drain_ratio_max: Option<f64>,
    /// The median round's CPU per event and the ratio that CPU allows.
    pub drain_cpu_budget: CpuBudget,
}

/// One drain round.
#[derive(Debug, Clone, Serialize)]
pub struct DrainRound {
    pub broker_before_events_per_s: Option<f64>,
    pub service_events_per_s: Option<f64>,
    pub broker_after_events_per_s: Option<f64>,
    pub ratio: Option<f64>,
    pub cpu: CpuBudget,
    pub records_verified: usize,
    pub records_mismatched: usize,
    pub records_missing: usize,
}

/// Every round's records, each against the storm's ground truth.
#[derive(Debug, Serialize)]
pub struct RecordFigures {
    pub records_verified: usize,
    pub records_mismatched: usize,
    pub records_missing: usize,
}

/// The seed baseline, and the median round's service drain against it.
#[derive(Debug, Serialize)]
pub struct SeedFigures {
    pub seed_baseline_events: usize,
    pub seed_baseline_seconds: Option<f64>,
    pub seed_baseline_events_per_s: Option<f64>,
    pub speedup_vs_seed: Option<f64>,
}

/// The steady state and its flush latencies.
#[derive(Debug, Serialize)]
pub struct SteadyFigures {
    pub steady_target_events_per_s: Option<f64>,
    pub steady_events_per_s: Option<f64>,
    pub steady_seconds: Option<f64>,
    pub steady_calls: usize,
    pub steady_messages: usize,
    pub steady_max_queue_depth: u32,
    pub steady_cpu: CpuShares,
    pub steady_writes: Writes,
    pub steady_queue_depth_at_end: u32,
    pub steady_calls_measured: usize,
    pub steady_calls_missing: usize,
    pub steady_calls_waited: usize,
    pub linger_ms: f64,
    pub flush_latency_p50_ms: Option<f64>,
    pub flush_latency_p90_ms: Option<f64>,
    pub flush_latency_p99_ms: Option<f64>,
    pub flush_latency_max_ms: Option<f64>,
    pub flush_latency_p50_minus_linger_ms: Option<f64>,
    pub flush_latency_p99_minus_linger_ms: Option<f64>,
    pub end_transit_p50_ms: Option<f64>,
    pub end_transit_p99_ms: Option<f64>,
    pub end_in_service_p50_ms: Option<f64>,
    pub end_in_service_p99_ms: Option<f64>,
}

/// Memory per open call, at rest and with actors.
#[derive(Debug, Serialize)]
pub struct OpenCallFigures {
    pub open_calls_measured: usize,
    pub rss_bytes_per_open_call: Option<f64>,
    pub open_calls_with_actors_measured: usize,
    pub rss_bytes_per_open_call_with_actor: Option<f64>,
    pub memory_resting: MemoryFigures,
    pub memory_actors: MemoryFigures,
}

/// What the report is built from.
/// The default mix against the all-JSON storm (`formats`).
#[derive(Debug, Serialize)]
pub struct FormatFigures {
    pub json_drain_events_per_s: Option<f64>,
    pub mixed_drain_events_per_s: Option<f64>,
    /// Mixed over all-JSON.
    pub mixed_vs_json_ratio: Option<f64>,
    pub mixed_protobuf_share_of_messages: Option<f64>,
    /// CPU per event of the service and of PostgreSQL in each drain (process start to the last
    /// record), in microseconds.
    pub json_service_cpu_us_per_event: Option<f64>,
    pub mixed_service_cpu_us_per_event: Option<f64>,
    pub json_postgres_cpu_us_per_event: Option<f64>,
    pub mixed_postgres_cpu_us_per_event: Option<f64>,
    pub records_mismatched: usize,
    pub records_missing: usize,
}

pub struct Phases<'a> {
    pub mode: &'static str,
    pub machine: Machine,
    pub options: &'a StormOptions,
    pub storm: &'a Storm,
    pub rounds: &'a Rounds,
    pub formats: &'a Formats,
    pub seed: &'a Drain,
    pub steady: &'a Steady,
    /// Calls of the steady state's storm.
    pub steady_calls: usize,
    pub memory: &'a Memory,
    pub takeover: &'a Takeover,
    pub bounds: &'a Bounds,
    pub tls: &'a Tls,
}

impl Report {
    pub fn build(p: &Phases<'_>) -> Report {
        let (_, service, _) = p.rounds.median_round();
        let service_rate = service.drain.rate();
        let seed_rate = p.seed.rate();
        Report {
            mode: p.mode,
            generated_at: Utc::now().to_rfc3339(),
            machine: p.machine.clone(),
            storm: StormFigures::new(p.options, p.storm),
            service_settings: ServiceSettings::new(),
            broker: BrokerFigures::new(p.rounds),
            service: ServiceFigures::new(p.rounds),
            floor: FloorFigures::new(p.rounds),
            rounds: RoundFigures::new(p.rounds),
            formats: FormatFigures::new(p.formats),
            records: RecordFigures {
                records_verified: p.rounds.services.iter().map(|s| s.records_verified).sum(),
                records_mismatched: p.rounds.services.iter().map(|s| s.records_mismatched).sum(),
                records_missing: p.rounds.services.iter().map(|s| s.records_missing).sum(),
            },
            seed: SeedFigures {
                seed_baseline_events: p.seed.events,
                seed_baseline_seconds: finite(p.seed.seconds, 3),
                seed_baseline_events_per_s: finite(seed_rate, 0),
                speedup_vs_seed: finite(service_rate / seed_rate, 2),
            },
            steady: SteadyFigures::new(p.steady, p.steady_calls),
            memory: OpenCallFigures {
                open_calls_measured: p.memory.resting.measured,
                rss_bytes_per_open_call: finite(p.memory.resting.per_call(), 0),
                open_calls_with_actors_measured: p.memory.actors.measured,
                rss_bytes_per_open_call_with_actor: finite(p.memory.actors.per_call(), 0),
                memory_resting: p.memory.resting.figures(),
                memory_actors: p.memory.actors.figures(),
            },
            takeover: p.takeover.clone(),
            bounds: p.bounds.clone(),
            tls: p.tls.figures(),
        }
    }
}

impl FormatFigures {
    fn new(f: &Formats) -> FormatFigures {
        let per_event_us = |d: &crate::service_drain::ServiceDrain, cpu: f64| {
            finite(cpu * 1e6 / d.drain.events.max(1) as f64, 2)
        };
        let service_us = |d| per_event_us(d, d.cpu_whole.seconds().service);
        let postgres_us = |d| per_event_us(d, d.cpu_whole.seconds().postgres);
        FormatFigures {
            json_drain_events_per_s: finite(f.json.drain.rate(), 0),
            mixed_drain_events_per_s: finite(f.mixed.drain.rate(), 0),
            mixed_vs_json_ratio: finite(f.ratio(), 3),
            mixed_protobuf_share_of_messages: finite(f.mixed_protobuf_share, 3),
            json_service_cpu_us_per_event: service_us(&f.json),
            mixed_service_cpu_us_per_event: service_us(&f.mixed),
            json_postgres_cpu_us_per_event: postgres_us(&f.json),
            mixed_postgres_cpu_us_per_event: postgres_us(&f.mixed),
            records_mismatched: f.json.records_mismatched + f.mixed.records_mismatched,
            records_missing: f.json.records_missing + f.mixed.records_missing,
        }
    }
}

impl StormFigures {
    fn new(o: &StormOptions, storm: &Storm) -> StormFigures {
        let st = &storm.stats;
        let events_per_call = storm.main.len() as f64 / storm.calls.len().max(1) as f64;
        StormFigures {
            options: options_json(o),
            calls: storm.calls.len(),
            messages: storm.main.len(),
            distinct_events: st.distinct_events,
            exact_duplicates: st.exact_duplicates,
            events_per_call: round(events_per_call, 2),
            events_by_type: st.events_by_type.clone(),
        }
    }
}

impl ServiceSettings {
    fn new() -> ServiceSettings {
        ServiceSettings {
            prefetch: PREFETCH,
            linger: humantime::format_duration(LINGER).to_string(),
            log_level: "warn",
            other: "defaults (config/default.toml)",
            environment_overrides: std::env::vars()
                .filter(|(k, _)| k.starts_with(ENV_PREFIX))
                .collect(),
        }
    }
}

impl BrokerFigures {
    fn new(rounds: &Rounds) -> BrokerFigures {
        let (broker, _, after) = rounds.median_round();
        let rates = [broker.drain.rate(), after.drain.rate()];
        BrokerFigures {
            broker_publish_events_per_s: finite(broker.publish_rate, 0),
            broker_drain_events_per_s: finite((rates[0] + rates[1]) / 2.0, 0),
            broker_drain_runs_events_per_s: [finite(rates[0], 0), finite(rates[1], 0)],
            broker_drain_seconds: [
                finite(broker.drain.seconds, 3),
                finite(after.drain.seconds, 3),
            ],
            broker_drain_cpu: [broker.cpu.clone(), after.cpu.clone()],
        }
    }
}

impl ServiceFigures {
    fn new(rounds: &Rounds) -> ServiceFigures {
        let (broker, service, after) = rounds.median_round();
        let broker_rate = (broker.drain.rate() + after.drain.rate()) / 2.0;
        let service_rate = service.drain.rate();
        let ingest_rate = service.drain.events as f64 / service.ingest_seconds;
        ServiceFigures {
            service_publish_events_per_s: finite(service.publish_rate, 0),
            service_drain_events_per_s: finite(service_rate, 0),
            service_drain_seconds: finite(service.drain.seconds, 3),
            service_startup_seconds: finite(service.startup, 3),
            service_ingest_events_per_s: finite(ingest_rate, 0),
            service_ingest_seconds: finite(service.ingest_seconds, 3),
            drain_ratio_vs_broker: finite(service_rate / broker_rate, 3),
            service_ingest_ratio_vs_broker: finite(ingest_rate / broker_rate, 3),
            service_drain_cpu: service.cpu.clone(),
            service_drain_cpu_from_start: service.cpu_whole.clone(),
            service_drain_writes: service.writes.clone(),
        }
    }
}

impl FloorFigures {
    fn new(rounds: &Rounds) -> FloorFigures {
        let (floor, cpu) = rounds.median_floor();
        let m = rounds.floor_median;
        let bound = rounds.broker_seconds(m)
            / (floor.seconds + rounds.services[m].startup + LINGER.as_secs_f64());
        FloorFigures {
            log_floor_events_per_s: finite(floor.rate(), 0),
            log_floor_seconds: finite(floor.seconds, 3),
            log_floor_cpu: cpu.clone(),
            log_floor_ratio_vs_broker: finite(rounds.floor_ratios[m], 3),
            log_floor_round_ratios: rounds.floor_ratios.iter().map(|r| finite(*r, 3)).collect(),
            drain_ratio_log_floor_bound: finite(bound, 3),
        }
    }
}

impl RoundFigures {
    fn new(rounds: &Rounds) -> RoundFigures {
        let drain_rounds: Vec<DrainRound> = (0..rounds.services.len())
            .map(|i| DrainRound::new(rounds, i))
            .collect();
        let mut ratios = rounds.ratios.clone();
        ratios.sort_by(f64::total_cmp);
        RoundFigures {
            drain_cpu_budget: drain_rounds[rounds.median].cpu.clone(),
            drain_rounds,
            drain_median_round: rounds.median + 1,
            drain_ratio_min: finite(ratios[0], 3),
            drain_ratio_max: finite(ratios[ratios.len() - 1], 3),
        }
    }
}

impl DrainRound {
    /// Round `i` (from 0).
    fn new(rounds: &Rounds, i: usize) -> DrainRound {
        let service = &rounds.services[i];
        DrainRound {
            broker_before_events_per_s: finite(rounds.brokers[i].drain.rate(), 0),
            service_events_per_s: finite(service.drain.rate(), 0),
            broker_after_events_per_s: finite(rounds.brokers[i + 1].drain.rate(), 0),
            ratio: finite(rounds.ratios[i], 3),
            cpu: rounds.budget(i),
            records_verified: service.records_verified,
            records_mismatched: service.records_mismatched,
            records_missing: service.records_missing,
        }
    }
}

impl SteadyFigures {
    fn new(steady: &Steady, steady_calls: usize) -> SteadyFigures {
        let lat = &steady.latencies;
        let linger_ms = LINGER.as_secs_f64() * 1000.0;
        let ms = |sorted: &[f64], p: f64| finite(percentile(sorted, p), 1);
        SteadyFigures {
            steady_target_events_per_s: finite(steady.target, 0),
            steady_events_per_s: finite(
                steady.messages as f64 / steady.publish_seconds.max(1e-9),
                0,
            ),
            steady_seconds: finite(steady.publish_seconds, 2),
            steady_calls,
            steady_messages: steady.messages,
            steady_max_queue_depth: steady.max_queue_depth,
            steady_cpu: steady.cpu.clone(),
            steady_writes: steady.writes.clone(),
            steady_queue_depth_at_end: steady.queue_depth_at_end,
            steady_calls_measured: lat.len(),
            steady_calls_missing: steady.calls_missing,
            steady_calls_waited: steady.calls_waited,
            linger_ms,
            flush_latency_p50_ms: ms(lat, 0.5),
            flush_latency_p90_ms: ms(lat, 0.9),
            flush_latency_p99_ms: ms(lat, 0.99),
            flush_latency_max_ms: ms(lat, 1.0),
            flush_latency_p50_minus_linger_ms: finite(percentile(lat, 0.5) - linger_ms, 1),
            flush_latency_p99_minus_linger_ms: finite(percentile(lat, 0.99) - linger_ms, 1),
            end_transit_p50_ms: ms(&steady.transit, 0.5),
            end_transit_p99_ms: ms(&steady.transit, 0.99),
            end_in_service_p50_ms: ms(&steady.in_service, 0.5),
            end_in_service_p99_ms: ms(&steady.in_service, 0.99),
        }
    }
}

/// A value as compact JSON, as the progress lines and the markdown show the report's numbers
/// (`1.0`, not `1`; `null` for nothing), its objects' keys sorted.
pub fn json_text<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value).map_or_else(|e| e.to_string(), |v| v.to_string())
}

/// `target/bench` (or under `CARGO_TARGET_DIR`).
pub fn out_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("bench")
}

/// Writes `storm-report.json` and `storm-report.md` into `out_dir()` and prints the markdown.
pub fn write(report: &Report) -> anyhow::Result<()> {
    let dir = out_dir();
    std::fs::create_dir_all(&dir)?;
    // Through a `Value`, whose objects keep their keys sorted: the file's keys in the same
    // order whatever the order of the fields above.
    let json = serde_json::to_value(report)?;
    std::fs::write(
        dir.join("storm-report.json"),
        serde_json::to_vec_pretty(&json)?,
    )?;
    let md = crate::markdown::markdown(report);
    std::fs::write(dir.join("storm-report.md"), &md)?;
    println!("\n{md}");
    progress!(
        "wrote {}/storm-report.{{json,md}}, storm-throughput.svg, storm-steady.svg, storm-flush-latency.svg",
        dir.display()
    );
    Ok(())
}
