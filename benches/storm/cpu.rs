//! Readings from /proc: the CPU every process used over a window, grouped (service, PostgreSQL,
//! RabbitMQ, the bench, the rest), the machine's own CPU time, a process's RSS, and the
//! machine's figures for the report.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::stats::{finite, round};

/// CPU ticks (user + system) of every process, by pid, with its command name.
pub type Snapshot = HashMap<u32, (String, u64)>;

/// Resident set size of a process, in bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .context("no VmRSS")?;
    Ok(kb * 1024)
}

/// CPU ticks (user + system) of every process, by pid, with its command name.
pub fn cpu_snapshot() -> Snapshot {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_owned();
        // After the command: state (field 3) ... utime (14), stime (15).
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        out.insert(pid, (comm, ticks(11) + ticks(12)));
    }
    out
}

/// The machine's CPU time so far, from /proc/stat.
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineTicks {
    total: u64,
    idle: u64,
    iowait: u64,
    /// Time the hypervisor gave this machine's CPUs to others: on a shared host it is the
    /// noise in every rate measured here.
    steal: u64,
}

pub fn machine_ticks() -> MachineTicks {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().next() else {
        return MachineTicks::default();
    };
    // user nice system idle iowait irq softirq steal guest guest_nice; guest time is already
    // counted in user, so the total stops at steal.
    let v: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    MachineTicks {
        total: v.iter().take(8).sum(),
        idle: at(3),
        iowait: at(4),
        steal: at(7),
    }
}

/// CPU by group, in cores (CPU seconds per wall second) or in CPU seconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Cores {
    pub service: f64,
    pub postgres: f64,
    pub rabbitmq: f64,
    pub bench: f64,
    pub other: f64,
}

/// As JSON, as the progress lines show it.
impl fmt::Display for Cores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::report::json_text(self))
    }
}

/// The CPU used over a window, by group, and how busy the machine was.
#[derive(Debug, Clone, Serialize)]
pub struct CpuShares {
    pub wall_seconds: f64,
    pub cores_used: Cores,
    /// Busy: running something of this machine's (not idle, not waiting for I/O, not stolen by
    /// the hypervisor).
    pub machine_busy_share: f64,
    pub machine_iowait_share: f64,
    pub machine_steal_share: f64,
    pub nproc: usize,
}

impl CpuShares {
    /// CPU used between two snapshots over `wall`; the process `service_pid` is the service.
    pub fn between(
        before: &Snapshot,
        after: &Snapshot,
        machine: (MachineTicks, MachineTicks),
        wall: Duration,
        service_pid: u32,
    ) -> CpuShares {
        // USER_HZ: 100 on every Linux ABI this runs on.
        const HZ: f64 = 100.0;
        let mut groups: HashMap<&str, u64> = HashMap::new();
        let me = std::process::id();
        for (pid, (comm, ticks)) in after {
            let used = ticks.saturating_sub(before.get(pid).map_or(0, |b| b.1));
            let group = if *pid == service_pid {
                "service"
            } else if *pid == me {
                "bench"
            } else if comm == "postgres" {
                "postgres"
            } else if comm == "beam.smp" || comm == "erl_child_setup" || comm == "epmd" {
                "rabbitmq"
            } else {
                "other"
            };
            *groups.entry(group).or_default() += used;
        }
        let secs = wall.as_secs_f64().max(1e-9);
        let cores = |g: &str| round(groups.get(g).copied().unwrap_or(0) as f64 / HZ / secs, 2);
        let (m0, m1) = machine;
        let total = m1.total.saturating_sub(m0.total).max(1) as f64;
        let idle = m1.idle.saturating_sub(m0.idle) as f64;
        let iowait = m1.iowait.saturating_sub(m0.iowait) as f64;
        let steal = m1.steal.saturating_sub(m0.steal) as f64;
        CpuShares {
            wall_seconds: secs,
            cores_used: Cores {
                service: cores("service"),
                postgres: cores("postgres"),
                rabbitmq: cores("rabbitmq"),
                bench: cores("bench"),
                other: cores("other"),
            },
            machine_busy_share: round(1.0 - (idle + iowait + steal) / total, 3),
            machine_iowait_share: round(iowait / total, 3),
            machine_steal_share: round(steal / total, 3),
            nproc: nproc(),
        }
    }

    /// CPU seconds each group spent over the window (from the rounded cores, as reported).
    pub fn seconds(&self) -> Cores {
        let c = &self.cores_used;
        let w = self.wall_seconds;
        Cores {
            service: c.service * w,
            postgres: c.postgres * w,
            rabbitmq: c.rabbitmq * w,
            bench: c.bench * w,
            other: c.other * w,
        }
    }
}

/// The CPU budget of one drain round: what the service, PostgreSQL and RabbitMQ spent in the
/// service drain (from process start to the last record), per event, and what RabbitMQ spent
/// per event in the broker drains around it.
///
/// `cpu_bound_ratio` is the ratio this machine would allow if its cores had been busy all
/// through the service drain with exactly that work, in any order and with no start-up or
/// linger: the broker drains' mean time against (CPU of the three) / cores. The measured ratio
/// can only come close to it; when it is below a target, no scheduling or overlap reaches the
/// target, only less CPU per event.
#[derive(Debug, Clone, Serialize)]
pub struct CpuBudget {
    pub service_cpu_seconds: f64,
    pub postgres_cpu_seconds: f64,
    pub rabbitmq_cpu_seconds: f64,
    pub service_cpu_us_per_event: f64,
    pub postgres_cpu_us_per_event: f64,
    pub rabbitmq_cpu_us_per_event: f64,
    pub broker_drain_rabbitmq_cpu_us_per_event: f64,
    pub cpu_bound_ratio: Option<f64>,
}

impl CpuBudget {
    /// The budget of a service drain of `events` with `whole` its CPU from process start, and
    /// `brokers` the CPU and seconds of the broker drains before and after it.
    pub fn new(events: usize, whole: &CpuShares, brokers: [(&CpuShares, f64); 2]) -> CpuBudget {
        let events = events.max(1) as f64;
        let per_event_us = |seconds: f64| round(seconds * 1e6 / events, 1);
        let used = whole.seconds();
        let (svc, pg, rmq) = (used.service, used.postgres, used.rabbitmq);
        let [(before, before_seconds), (after, after_seconds)] = brokers;
        let broker_rmq = (before.seconds().rabbitmq + after.seconds().rabbitmq) / 2.0;
        let broker_seconds = (before_seconds + after_seconds) / 2.0;
        let cores = whole.nproc.max(1) as f64;
        let busiest = (svc + pg + rmq) / cores;
        CpuBudget {
            service_cpu_seconds: round(svc, 2),
            postgres_cpu_seconds: round(pg, 2),
            rabbitmq_cpu_seconds: round(rmq, 2),
            service_cpu_us_per_event: per_event_us(svc),
            postgres_cpu_us_per_event: per_event_us(pg),
            rabbitmq_cpu_us_per_event: per_event_us(rmq),
            broker_drain_rabbitmq_cpu_us_per_event: per_event_us(broker_rmq),
            cpu_bound_ratio: finite(broker_seconds / busiest.max(1e-9), 3),
        }
    }
}

pub fn nproc() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The machine the bench ran on, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub mem_total_bytes: u64,
    pub mem_total_gib: f64,
    pub cpu_model: String,
    pub postgres_version: String,
    pub rabbitmq_version: String,
    pub note: &'static str,
}

impl Machine {
    /// This machine's figures, with the servers' versions.
    pub fn read(postgres_version: String, rabbitmq_version: String) -> Machine {
        let mem_total_bytes = mem_total_bytes();
        Machine {
            nproc: nproc(),
            mem_total_bytes,
            mem_total_gib: round(mem_total_bytes as f64 / 1073741824.0, 1),
            cpu_model: cpu_model(),
            postgres_version,
            rabbitmq_version,
            note: "PostgreSQL, RabbitMQ, the service and the bench on the same machine",
        }
    }
}

fn mem_total_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default()
}
