//! The SVG charts: the drains' throughput, the steady state's, and the flush latency's
//! distribution.

use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::clock::{Drain, Samples, rate_series};
use crate::drains::Rounds;
use crate::stats::percentile;
use crate::steady::Steady;
use crate::{LINGER, Storm};

/// A chart's line: its label, (x, y) points and colour.
type Line = (String, Vec<(f64, f64)>, RGBColor);

/// Rates over a 1 s window.
fn rates(s: &Samples) -> Vec<(f64, f64)> {
    rate_series(s, 1.0)
}

/// Every chart, into `dir`.
pub fn draw(
    dir: &Path,
    storm: &Storm,
    rounds: &Rounds,
    seed: &Drain,
    steady: &Steady,
    events_per_call: f64,
) -> anyhow::Result<()> {
    drain_chart(dir, storm, rounds, seed, events_per_call)?;
    throughput_chart(
        &dir.join("storm-steady.svg"),
        &format!(
            "Steady state: target {:.0} events/s, {} messages",
            steady.target, steady.messages
        ),
        "events per second",
        &[
            (
                "published".into(),
                rates(&steady.published),
                RGBColor(120, 120, 120),
            ),
            (
                "logged by the service".into(),
                rates(&steady.logged),
                RGBColor(30, 110, 200),
            ),
        ],
    )?;
    latency_chart(
        &dir.join("storm-flush-latency.svg"),
        &steady.latencies,
        LINGER.as_secs_f64() * 1000.0,
    )
}

/// The drains of the median rounds, side by side with the seed baseline.
fn drain_chart(
    dir: &Path,
    storm: &Storm,
    rounds: &Rounds,
    seed: &Drain,
    events_per_call: f64,
) -> anyhow::Result<()> {
    let (broker, service, broker_after) = rounds.median_round();
    let (floor, _) = rounds.median_floor();
    throughput_chart(
        &dir.join("storm-throughput.svg"),
        &format!(
            "Drains of the same storm ({} messages; seed baseline on {}): events/s, 1 s window",
            storm.main.len(),
            seed.events
        ),
        "events per second",
        &[
            (
                "broker: do-nothing consumer (before the service)".into(),
                rates(&broker.drain.samples),
                RGBColor(120, 120, 120),
            ),
            (
                "broker: do-nothing consumer (after the service)".into(),
                rates(&broker_after.drain.samples),
                RGBColor(170, 170, 170),
            ),
            (
                "log floor: decode, append, ack (nothing after the log)".into(),
                rates(&floor.samples),
                RGBColor(60, 160, 90),
            ),
            (
                "service: events logged (from process start)".into(),
                rates(&service.drain.samples),
                RGBColor(30, 110, 200),
            ),
            (
                format!("service: records written x {events_per_call:.1} (events per call)"),
                rates(&service.record_samples)
                    .into_iter()
                    .map(|(t, r)| (t, r * events_per_call))
                    .collect(),
                RGBColor(120, 180, 240),
            ),
            (
                "seed baseline: per event, autocommit".into(),
                rates(&seed.samples),
                RGBColor(210, 60, 40),
            ),
        ],
    )
}

/// Lines of events per second over the seconds of a phase.
fn throughput_chart(path: &Path, title: &str, y_desc: &str, series: &[Line]) -> anyhow::Result<()> {
    let xmax = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let ymax = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .fold(1.0f64, f64::max);
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..xmax * 1.02, 0f64..ymax * 1.12)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the phase started")
        .y_desc(y_desc)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    for (name, points, color) in series {
        draw_line(&mut chart, points.clone(), *color, name.clone())?;
    }
    draw_legend(&mut chart)?;
    root.present()?;
    Ok(())
}

/// The flush latencies (sorted, ms) as a histogram, with p50 and p99 marked.
fn latency_chart(path: &Path, sorted_ms: &[f64], linger_ms: f64) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    if sorted_ms.is_empty() {
        root.present()?;
        return Ok(());
    }
    let lo = sorted_ms[0].min(linger_ms).max(0.0);
    let hi = percentile(sorted_ms, 0.999).max(lo + 1.0);
    let buckets = 60usize;
    let width = (hi - lo) / buckets as f64;
    let mut counts = vec![0u64; buckets];
    for &v in sorted_ms {
        let i = (((v - lo) / width).floor().max(0.0) as usize).min(buckets - 1);
        counts[i] += 1;
    }
    let ymax = counts.iter().copied().max().unwrap_or(1) as f64;
    let (p50, p99) = (percentile(sorted_ms, 0.5), percentile(sorted_ms, 0.99));
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Flush latency: call.ended published -> row committed ({} calls; linger {linger_ms:.0} ms included)",
                sorted_ms.len()
            ),
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(lo..hi, 0f64..ymax * 1.15)?;
    chart
        .configure_mesh()
        .x_desc("milliseconds (last bucket holds everything above p99.9)")
        .y_desc("calls")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    chart.draw_series(counts.iter().enumerate().map(|(i, &c)| {
        let x0 = lo + i as f64 * width;
        Rectangle::new(
            [(x0, 0.0), (x0 + width * 0.92, c as f64)],
            RGBColor(70, 120, 190).filled(),
        )
    }))?;
    for (label, x, color) in [("p50", p50, RED), ("p99", p99, BLACK)] {
        let points = vec![(x, 0.0), (x, ymax * 1.1)];
        draw_line(&mut chart, points, color, format!("{label} {x:.0} ms"))?;
    }
    draw_legend(&mut chart)?;
    root.present()?;
    Ok(())
}

/// A chart of seconds or milliseconds against counts or rates.
type Chart<'a> = ChartContext<'a, SVGBackend<'a>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A line of `points`, with its entry in the legend.
fn draw_line(
    chart: &mut Chart<'_>,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    label: String,
) -> anyhow::Result<()> {
    chart
        .draw_series(LineSeries::new(points, color.stroke_width(2)))?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    Ok(())
}

/// The legend, in the upper right corner.
fn draw_legend(chart: &mut Chart<'_>) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
