//! The wire formats side by side: the service draining the drain storm as a current platform
//! sends it (`cdr-service storm`'s default mix: most events with a protobuf producer as
//! protobuf) and the same storm all in JSON (the same calls, placement and ground truth; only
//! the bodies differ), back to back, each on a fresh database and queue. The ratio of the two
//! rates is what today's mix costs or saves against an all-JSON platform, measured in one run.

use crate::env::Env;
use crate::service_drain::{ServiceDrain, service_drain};
use crate::{Storm, StormOptions, generate, limits};

pub struct Formats {
    /// The all-JSON storm's drain, then the default mix's.
    pub json: ServiceDrain,
    pub mixed: ServiceDrain,
    /// Of the mixed storm's main-phase messages, the share in protobuf.
    pub mixed_protobuf_share: f64,
}

impl Formats {
    /// The mixed storm's drain rate over the all-JSON storm's.
    pub fn ratio(&self) -> f64 {
        self.mixed.drain.rate() / self.json.drain.rate().max(1e-9)
    }
}

/// Drains the all-JSON twin of `mixed`, then `mixed`. `round` numbers the fresh databases and
/// queues after the drain rounds'.
pub async fn formats(
    env: &mut Env,
    mixed: &Storm,
    o: &StormOptions,
    round: usize,
) -> anyhow::Result<Formats> {
    let json_options = StormOptions {
        protobuf: 0.0,
        ..o.clone()
    };
    let json_storm = generate(&json_options, limits(&env.settings));
    anyhow::ensure!(
        json_storm.main.len() == mixed.main.len(),
        "the all-JSON storm has {} messages, the mixed one {}",
        json_storm.main.len(),
        mixed.main.len()
    );
    progress!("formats: service drain of the all-JSON storm");
    env.next_round(round).await?;
    let json = service_drain(env, &json_storm, &json_options).await?;
    progress!("formats: service drain of the default mix");
    env.next_round(round + 1).await?;
    let mixed_drain = service_drain(env, mixed, o).await?;
    let by_format = &mixed.stats.messages_by_format;
    let protobuf = by_format.get("protobuf").copied().unwrap_or(0) as f64;
    let all: usize = by_format.values().sum();
    Ok(Formats {
        json,
        mixed: mixed_drain,
        mixed_protobuf_share: protobuf / all.max(1) as f64,
    })
}
