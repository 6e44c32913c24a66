//! The bench's command line: two presets and the sizes they set, each of which can be given on
//! its own.

use std::time::Duration;

use anyhow::bail;
use clap::Parser;

/// End-to-end storm benchmark: the service against the limits of this machine, in one run.
///
/// The presets set every size; the size options then override single ones, whatever their
/// order. Writes target/bench/storm-report.{json,md} and SVG charts beside them.
#[derive(Debug, Parser)]
#[command(
    name = "storm",
    bin_name = "cargo bench --bench storm --",
    args_override_self = true,
    allow_negative_numbers = true
)]
struct Args {
    /// Everything small, about a minute: 2,000 calls, 2,000 seed messages, 5,000 events/s for
    /// 5 s, 20,000 open calls.
    #[arg(long)]
    quick: bool,
    /// 1,000,000 open calls for memory and three drain rounds (on the default sizes, or on the
    /// quick ones with --quick).
    #[arg(long)]
    full: bool,
    /// Calls of the drain storm (broker and service drains) [default: 40,000].
    #[arg(long, value_name = "N", value_parser = count)]
    calls: Option<usize>,
    /// Messages of the drain storm given to the seed baseline [default: 20,000].
    #[arg(long, value_name = "N", value_parser = count)]
    seed_messages: Option<usize>,
    /// Steady state: target events per second [default: 20,000].
    #[arg(long, value_name = "RATE")]
    steady_rate: Option<f64>,
    /// Steady state: seconds of publishing [default: 30].
    #[arg(long, value_name = "SECS")]
    steady_secs: Option<f64>,
    /// Open calls for the memory measurement [default: 100,000].
    #[arg(long, value_name = "N", value_parser = count)]
    open_calls: Option<usize>,
    /// Service drains, each between two broker drains; the drain ratio is the median round's
    /// [default: 1].
    #[arg(long, value_name = "N", value_parser = count)]
    rounds: Option<usize>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
    /// Anything else `cargo bench` passes on (a name filter); ignored.
    #[arg(hide = true)]
    ignored: Vec<String>,
}

/// A count given as any number (`1e5` too), its fraction dropped.
fn count(value: &str) -> Result<usize, String> {
    value
        .parse::<f64>()
        .map(|v| v as usize)
        .map_err(|_| "not a number".to_owned())
}

/// The sizes of one run.
#[derive(Debug, Clone)]
pub struct Sizes {
    pub mode: &'static str,
    /// Calls of the drain storm (broker and service drains).
    pub calls: usize,
    /// Messages of the drain storm given to the seed baseline, and its time limit.
    pub seed_messages: usize,
    pub seed_max: Duration,
    /// Steady state: target events/s and publishing time.
    pub steady_rate: f64,
    pub steady_secs: f64,
    /// Open calls for the memory measurement.
    pub open_calls: usize,
    /// Service drains, each between two broker drains (broker, service, broker, service, ...,
    /// broker): the drain ratio is the median of the rounds' ratios.
    pub rounds: usize,
}

const QUICK: Sizes = Sizes {
    mode: "quick",
    calls: 2_000,
    seed_messages: 2_000,
    seed_max: Duration::from_secs(20),
    steady_rate: 5_000.0,
    steady_secs: 5.0,
    open_calls: 20_000,
    rounds: 1,
};

const DEFAULT: Sizes = Sizes {
    mode: "default",
    calls: 40_000,
    seed_messages: 20_000,
    seed_max: Duration::from_secs(60),
    steady_rate: 20_000.0,
    steady_secs: 30.0,
    open_calls: 100_000,
    rounds: 1,
};

impl Sizes {
    /// The sizes the command line asks for (`--help` prints the options and exits).
    pub fn from_args() -> anyhow::Result<Sizes> {
        Sizes::from(Args::parse())
    }

    fn from(args: Args) -> anyhow::Result<Sizes> {
        for other in &args.ignored {
            eprintln!("storm bench: ignoring argument {other:?}");
        }
        let mut sizes = if args.quick { QUICK } else { DEFAULT };
        if args.full {
            sizes.mode = if args.quick { "quick+full" } else { "full" };
            sizes.open_calls = 1_000_000;
            sizes.rounds = 3;
        }
        sizes.calls = args.calls.unwrap_or(sizes.calls);
        sizes.seed_messages = args.seed_messages.unwrap_or(sizes.seed_messages);
        sizes.steady_rate = args.steady_rate.unwrap_or(sizes.steady_rate);
        sizes.steady_secs = args.steady_secs.unwrap_or(sizes.steady_secs);
        sizes.open_calls = args.open_calls.unwrap_or(sizes.open_calls);
        sizes.rounds = args.rounds.unwrap_or(sizes.rounds);
        if sizes.calls == 0
            || sizes.open_calls == 0
            || sizes.rounds == 0
            || sizes.steady_rate <= 0.0
        {
            bail!("--calls, --open-calls, --rounds and --steady-rate must be above 0");
        }
        Ok(sizes)
    }
}
