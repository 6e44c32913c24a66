//! End-to-end storm benchmark: the service against the limits of this machine, in one run.
//!
//! ```sh
//! cargo bench --bench storm                # default sizes (a few minutes on 2 cores)
//! cargo bench --bench storm -- --quick     # everything small, about a minute
//! cargo bench --bench storm -- --full      # default, with 1,000,000 open calls for memory
//!                                          # and three drain rounds
//! # drains only, in practice: five rounds, the other phases tiny (to compare two builds)
//! cargo bench --bench storm -- --rounds 5 --seed-messages 2000 --steady-secs 3 --open-calls 2000
//! cargo bench --bench storm -- --help      # every option
//! ```
//!
//! The presets (`--quick`, `--full`, both at once for the quick sizes with the full memory and
//! rounds) set every size; `--calls`, `--seed-messages`, `--steady-rate`, `--steady-secs`,
//! `--open-calls` and `--rounds` then override single ones, whatever their order. The `--bench`
//! that `cargo bench` passes, and any name filter, are ignored.
//!
//! Needs PostgreSQL and RabbitMQ (`TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`; `TEST_RABBITMQ_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`). Creates a database `cdr_bench_<random>` and
//! exchanges/queues `cdr_bench.<random>.*`, and removes them at the end. Measures, side by side:
//!
//! 1. broker drain: the storm's main phase as a backlog in a fresh queue, drained by a consumer
//!    that does nothing (manual acks, the service's default prefetch): the broker's limit;
//! 2. service drain: the same backlog in the service's queue, then the release binary started
//!    as a child, timed from its start until every record is in `calls`; every record is then
//!    verified against the storm's ground truth. With `--rounds N`, N service drains, each on a
//!    fresh database and queue and each followed by a broker drain; the ratio reported is the
//!    median round's, with every round's beside it. The drain ends with the last record's
//!    transaction (`updated_at`), as the flush latency does.
//!    After each service drain, the log floor: the same backlog decoded, appended with the
//!    service's event log and acked after each commit by a consumer in the bench that does
//!    nothing after the log (no records, dialog turns or usage lines), timed like the broker
//!    drains: the ack path alone, above what any service that keeps the log and writes the
//!    records could reach here;
//!    Then the wire formats: the same storm all in JSON and as the default mix (mostly
//!    protobuf), one service drain each, back to back; their ratio; then TLS to both peers
//!    against none, the service reaching each through a proxy either way; their ratio;
//! 3. seed baseline: what the platform's original consumer did, per event and serially: insert
//!    the raw event, upsert the `calls` column of that event type (autocommit each), ack each;
//! 4. steady state: the service fed at a fixed rate; flush latency from publishing a call's
//!    `call.ended` to its row's `updated_at` (the writer's transaction time);
//! 5. memory: the service's RSS per open call (calls started and answered, never ended), as
//!    they settle at rest (quiet for `tracker.rest_after`: state kept, no actor), and, for up to
//!    100,000 calls, with one actor each (before they rest);
//! 6. takeover: an active instance and a standby; up to 100,000 calls opened (every event but
//!    the ends); kill -9 of the active; the time until the standby holds the lease and until it
//!    consumes again (recovered, ready); then the ends, and every record verified;
//! 7. bounds: RSS with `tracker.max_open_calls` = `--open-calls` and 10% more calls published
//!    (those deferred), and the peak RSS while the largest allowed call (10,000 events of about
//!    1 MB) is re-activated by a late event.
//!
//! Writes `target/bench/storm-report.{json,md}` and SVG charts beside them. It measures and
//! reports only: nothing here passes or fails on a timing.
//!
//! The modules: `args` (the command line), `env` (database, exchanges and queues, the service
//! as a child, its metrics), one module per phase (`broker`, `service_drain`, `floor`, `seed`,
//! `steady`, `memory`) with `drains` running the drain rounds, `clock` (the drains' timing and
//! sampling), `cpu` (CPU, memory and machine figures from /proc), `stats`, `charts`, and the
//! typed report (`report`) with its markdown table (`markdown`).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

// Every path into the service's crates, in one place: the modules take them from here.
use cdr_service::config::{ENV_PREFIX, Settings};
use cdr_service::db::migrate;
use cdr_service::event::{self, EventKind, Limits};
use cdr_service::ingest::queue_arguments;
use cdr_service::log::EventLog;
use cdr_storm::publish::{StormPublisher, queue_depth};
use cdr_storm::simulate::Publisher;
use cdr_storm::verify::Verifier;
use cdr_storm::{Message, MessageKind, Storm, StormOptions, generate, limits, options_json};
use cdr_testkit::proxy::Proxy;
use cdr_testkit::tls::{Protocol, TestCa, TlsProxy, socket_address};

/// The service's default prefetch (`amqp.prefetch`), used by the bench's own consumers too.
const PREFETCH: u16 = 6000;
/// Publishes awaiting their confirm at once.
const IN_FLIGHT: usize = 1000;
/// `tracker.linger` given to the service.
const LINGER: Duration = Duration::from_secs(1);
/// Open calls at the takeover (at most; `--open-calls` when smaller).
const TAKEOVER_CALLS: usize = 100_000;
/// Sampling period of the throughput series.
const SAMPLE: Duration = Duration::from_millis(200);

static STARTED: OnceLock<Instant> = OnceLock::new();

/// A progress line, with the seconds since the bench started.
macro_rules! progress {
    ($($arg:tt)*) => {{
        let t = $crate::STARTED.get_or_init(std::time::Instant::now).elapsed().as_secs_f64();
        println!("[storm bench {t:>6.1}s] {}", format!($($arg)*));
    }};
}

mod args;
mod bounds;
mod broker;
mod charts;
mod clock;
mod cpu;
mod drains;
mod env;
mod floor;
mod formats;
mod markdown;
mod memory;
mod report;
mod seed;
mod service_drain;
mod stats;
mod steady;
mod takeover;
mod tls;

use args::Sizes;
use env::Env;
use report::{Phases, Report};

fn main() -> anyhow::Result<()> {
    STARTED.get_or_init(Instant::now);
    let sizes = Sizes::from_args()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(sizes))
}

async fn run(sizes: Sizes) -> anyhow::Result<()> {
    progress!(
        "mode {}: {} calls, seed baseline {} messages, steady {:.0} events/s for {:.0}s, {} open calls",
        sizes.mode,
        sizes.calls,
        sizes.seed_messages,
        sizes.steady_rate,
        sizes.steady_secs,
        sizes.open_calls
    );
    let mut env = Env::create().await?;
    progress!(
        "database {}, exchanges/queues cdr_bench.{}.*",
        env.db_names.join(", "),
        env.id
    );
    let result = phases(&mut env, &sizes).await;
    env.cleanup().await;
    let report = result?;
    report::write(&report)
}

/// The storm options of the drains and the steady state: no late phase, no poison, no call
/// left without its end.
fn storm_options(calls: usize, seed: u64) -> StormOptions {
    StormOptions {
        calls,
        seed,
        late: 0.0,
        poison: 0.0,
        missing_end: 0.0,
        verify_timeout: Duration::from_secs(120),
        ..StormOptions::default()
    }
}

/// Every phase in order, then the charts; the report of them all.
async fn phases(env: &mut Env, sizes: &Sizes) -> anyhow::Result<Report> {
    let dir = report::out_dir();
    std::fs::create_dir_all(&dir)?;
    let o = storm_options(sizes.calls, 1);
    let generated = Instant::now();
    let storm = generate(&o, limits(&env.settings));
    let st = &storm.stats;
    progress!(
        "storm: {} calls, {} main-phase messages ({} distinct events, {} exact duplicates), generated in {:.1}s",
        st.calls,
        storm.main.len(),
        st.distinct_events,
        st.exact_duplicates,
        generated.elapsed().as_secs_f64()
    );
    let events_per_call = storm.main.len() as f64 / storm.calls.len().max(1) as f64;

    let rounds = drains::Rounds::run(env, &storm, &o, sizes.rounds).await?;
    let formats = formats::formats(env, &storm, &o, sizes.rounds + 1).await?;
    let tls = tls::tls(env, &storm, &o, sizes.rounds + 3).await?;
    let seed = seed::seed_baseline(env, &storm, sizes.seed_messages, sizes.seed_max).await?;
    let (steady, steady_o) =
        steady::steady_state(env, sizes.steady_rate, sizes.steady_secs, events_per_call).await?;
    let memory = memory::memory(env, sizes.open_calls).await?;
    let takeover = takeover::takeover(env, sizes.open_calls.min(TAKEOVER_CALLS)).await?;
    let bounds = bounds::bounds(env, sizes.open_calls).await?;

    charts::draw(&dir, &storm, &rounds, &seed, &steady, events_per_call)?;
    let (pg_version, rabbit_version) = env::server_versions(env).await;
    Ok(Report::build(&Phases {
        mode: sizes.mode,
        machine: cpu::Machine::read(pg_version, rabbit_version),
        options: &o,
        storm: &storm,
        rounds: &rounds,
        formats: &formats,
        seed: &seed,
        steady: &steady,
        steady_calls: steady_o.calls,
        memory: &memory,
        takeover: &takeover,
        bounds: &bounds,
        tls: &tls,
    }))
}
