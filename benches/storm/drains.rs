//! The drain rounds: a broker drain, then per round a service drain, its log floor and another
//! broker drain; each round's ratios against the broker drains on either side of it, and the
//! median rounds.
//!
//! The broker is drained before and after each service drain, and each round's ratio is taken
//! against the mean of the two: on a shared host the machine's speed drifts over minutes, and
//! one broker run on one side of the service drain would carry that drift into the ratio. With
//! several rounds the report gives the median round's figures (the lower of the two middle ones
//! for an even count) and every round's ratio beside them: one round moves by 10 to 20% from
//! run to run on a shared 2-core machine.

use crate::broker::{BrokerDrain, broker_drain};
use crate::clock::Drain;
use crate::cpu::{CpuBudget, CpuShares};
use crate::env::Env;
use crate::floor::log_floor;
use crate::service_drain::{ServiceDrain, service_drain};
use crate::stats::median_index;
use crate::{Storm, StormOptions};

/// Every drain of the rounds, and their ratios.
pub struct Rounds {
    /// One more than the rounds: the broker drains before and after each service drain.
    pub brokers: Vec<BrokerDrain>,
    pub services: Vec<ServiceDrain>,
    pub floors: Vec<(Drain, CpuShares)>,
    /// Each round's service drain rate against its broker drains' mean rate.
    pub ratios: Vec<f64>,
    /// The round with the median ratio.
    pub median: usize,
    /// Each round's broker drains' mean time against its log floor's time.
    pub floor_ratios: Vec<f64>,
    /// The round with the median floor ratio.
    pub floor_median: usize,
}

impl Rounds {
    /// Runs `rounds` drain rounds on `storm`.
    pub async fn run(
        env: &mut Env,
        storm: &Storm,
        o: &StormOptions,
        rounds: usize,
    ) -> anyhow::Result<Rounds> {
        let mut brokers = vec![broker_drain(env, storm, 1).await?];
        let mut services = Vec::with_capacity(rounds);
        let mut floors = Vec::with_capacity(rounds);
        for round in 1..=rounds {
            if round > 1 {
                env.next_round(round).await?;
                progress!("drain round {round} of {rounds}");
            }
            services.push(service_drain(env, storm, o).await?);
            floors.push(log_floor(env, storm, round).await?);
            brokers.push(broker_drain(env, storm, round as u32 + 1).await?);
        }
        let ratios: Vec<f64> = (0..services.len())
            .map(|i| {
                services[i].drain.rate()
                    / ((brokers[i].drain.rate() + brokers[i + 1].drain.rate()) / 2.0)
            })
            .collect();
        let median = median_index(&ratios);
        let mut drains = Rounds {
            brokers,
            services,
            floors,
            ratios,
            median,
            floor_ratios: Vec::new(),
            floor_median: 0,
        };
        // The log floor of each round, against the broker drains on either side of it, as the
        // service's; the report gives the median round's.
        drains.floor_ratios = (0..drains.floors.len())
            .map(|i| drains.broker_seconds(i) / drains.floors[i].0.seconds.max(1e-9))
            .collect();
        drains.floor_median = median_index(&drains.floor_ratios);
        Ok(drains)
    }

    /// The mean time of the broker drains on either side of round `i` (from 0).
    pub fn broker_seconds(&self, i: usize) -> f64 {
        (self.brokers[i].drain.seconds + self.brokers[i + 1].drain.seconds) / 2.0
    }

    /// The CPU budget of round `i` (from 0).
    pub fn budget(&self, i: usize) -> CpuBudget {
        let (service, before, after) = (&self.services[i], &self.brokers[i], &self.brokers[i + 1]);
        CpuBudget::new(
            service.drain.events,
            &service.cpu_whole,
            [
                (&before.cpu, before.drain.seconds),
                (&after.cpu, after.drain.seconds),
            ],
        )
    }

    /// The median round's broker drains (before, after) and service drain.
    pub fn median_round(&self) -> (&BrokerDrain, &ServiceDrain, &BrokerDrain) {
        let m = self.median;
        (&self.brokers[m], &self.services[m], &self.brokers[m + 1])
    }

    /// The median floor round's drain and CPU.
    pub fn median_floor(&self) -> &(Drain, CpuShares) {
        &self.floors[self.floor_median]
    }
}
