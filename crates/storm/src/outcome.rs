//! What `storm --verify` found: every call's verdict (correct, wrong in some fields, missing),
//! the poison and platform events that leaked into the log, how the dead-letter queue grew;
//! printed and in the JSON report.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

pub use cdr_schema::row::FieldDiff;

#[derive(Debug, Clone)]
pub struct Mismatch {
    pub call_id: String,
    pub fields: Vec<FieldDiff>,
}

#[derive(Debug, Clone)]
pub struct Missing {
    pub call_id: String,
    /// The row's event count, when there is a row.
    pub have: Option<i32>,
    pub want: usize,
}

#[derive(Debug)]
pub struct Outcome {
    pub calls: usize,
    pub correct: usize,
    pub mismatches: Vec<Mismatch>,
    pub missing: Vec<Missing>,
    /// Expected records by status/disposition.
    pub by_outcome: BTreeMap<String, usize>,
    pub poison_expected: usize,
    /// Poison call ids found in `call_events` or `calls`.
    pub poison_leaked: Vec<String>,
    /// Platform events published (not about a call: acknowledged, neither dead-lettered nor
    /// logged).
    pub platform_expected: usize,
    /// The ids platform events carry, found as call ids in `call_events` or `calls`.
    pub platform_leaked: Vec<String>,
    pub dead_letter_queue: String,
    /// Growth of the dead-letter queue during the storm, when it could be read, in distinct
    /// messages.
    pub dead_lettered: Option<i64>,
    /// Dead letters published more than once (a service killed between publishing a dead
    /// letter and acking its message, which came again): at least once, as every delivery.
    pub dead_letter_copies: Option<i64>,
    /// From the last publish to the last record complete.
    pub complete_after_publish: Option<Duration>,
    pub waited: Duration,
}

impl Outcome {
    /// Every record right, nothing leaked into the log, nothing dead-lettered beyond the poison.
    /// The dead-letter queue growing by less is not a failure (it may have a consumer, or a
    /// length limit); growing by more means the service dead-lettered a message the storm
    /// says is fine, a platform event most likely.
    pub fn passed(&self) -> bool {
        self.mismatches.is_empty()
            && self.missing.is_empty()
            && self.poison_leaked.is_empty()
            && self.platform_leaked.is_empty()
            && !self.dead_letter_surplus()
    }

    /// The dead-letter queue grew by more than the poison.
    fn dead_letter_surplus(&self) -> bool {
        self.dead_lettered
            .is_some_and(|n| n > i64::try_from(self.poison_expected).unwrap_or(i64::MAX))
    }

    pub fn print(&self, show: usize) {
        println!(
            "verify: {} calls: {} correct, {} wrong, {} missing{}",
            self.calls,
            self.correct,
            self.mismatches.len(),
            self.missing.len(),
            match self.complete_after_publish {
                Some(t) => format!(
                    "; every record complete {:.1}s after the last publish",
                    t.as_secs_f64()
                ),
                None => format!("; gave up after {:.0}s", self.waited.as_secs_f64()),
            }
        );
        let kinds: Vec<String> = self
            .by_outcome
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        println!("  records: {}", kinds.join(", "));
        if self.poison_expected > 0 || self.dead_letter_surplus() {
            println!(
                "  poison: {} messages; {}; dead-letter queue {:?} {}",
                self.poison_expected,
                if self.poison_leaked.is_empty() {
                    "none logged as a call event".to_owned()
                } else {
                    format!(
                        "{} LOGGED as call events: {:?}",
                        self.poison_leaked.len(),
                        &self.poison_leaked[..self.poison_leaked.len().min(show)]
                    )
                },
                self.dead_letter_queue,
                match self.dead_lettered {
                    Some(n) if self.dead_letter_surplus() => format!(
                        "grew by {n}, MORE than the {} poison messages: the service \
                         dead-lettered messages it should have taken",
                        self.poison_expected
                    ),
                    Some(n) => format!(
                        "grew by {n} (expected {}){}",
                        self.poison_expected,
                        match self.dead_letter_copies {
                            Some(c) if c > 0 => format!(
                                ", and {c} more copies of them (dead-lettered again after a crash before the ack)"
                            ),
                            _ => String::new(),
                        }
                    ),
                    None => "could not be read".to_owned(),
                }
            );
        }
        if self.platform_expected > 0 {
            println!(
                "  platform events (not about a call): {} messages; {}",
                self.platform_expected,
                if self.platform_leaked.is_empty() {
                    "none logged as a call event".to_owned()
                } else {
                    format!(
                        "{} LOGGED as call events: {:?}",
                        self.platform_leaked.len(),
                        &self.platform_leaked[..self.platform_leaked.len().min(show)]
                    )
                }
            );
        }
        if !self.mismatches.is_empty() {
            println!(
                "first mismatches ({} of {}):",
                self.mismatches.len().min(show),
                self.mismatches.len()
            );
            for m in self.mismatches.iter().take(show) {
                println!("  {}", m.call_id);
                for f in &m.fields {
                    println!(
                        "    {}: expected {}, found {}",
                        f.field, f.expected, f.found
                    );
                }
            }
        }
        if !self.missing.is_empty() {
            println!(
                "missing records ({} of {}):",
                self.missing.len().min(show),
                self.missing.len()
            );
            for m in self.missing.iter().take(show) {
                match m.have {
                    Some(n) => println!(
                        "  {}: the row folds {n} of its {} distinct events",
                        m.call_id, m.want
                    ),
                    None => println!("  {}: no row ({} distinct events)", m.call_id, m.want),
                }
            }
        }
        println!(
            "verify: {}",
            if self.passed() { "PASSED" } else { "FAILED" }
        );
    }

    pub fn to_json(&self, limit: usize) -> Value {
        json!({
            "passed": self.passed(),
            "calls": self.calls,
            "correct": self.correct,
            "mismatched": self.mismatches.len(),
            "missing": self.missing.len(),
            "records": self.by_outcome,
            "poison_expected": self.poison_expected,
            "poison_leaked": self.poison_leaked.len(),
            "platform_expected": self.platform_expected,
            "platform_leaked": self.platform_leaked.len(),
            "dead_letter_queue": self.dead_letter_queue,
            "dead_lettered": self.dead_lettered,
            "dead_letter_copies": self.dead_letter_copies,
            "complete_after_publish_seconds": self.complete_after_publish.map(|d| d.as_secs_f64()),
            "waited_seconds": self.waited.as_secs_f64(),
            "first_mismatches": self.mismatches.iter().take(limit).map(|m| json!({
                "call_id": m.call_id,
                "fields": m.fields.iter().map(|f| json!({
                    "field": f.field, "expected": f.expected, "found": f.found,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "first_missing": self.missing.iter().take(limit).map(|m| json!({
                "call_id": m.call_id, "have": m.have, "want": m.want,
            })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean() -> Outcome {
        Outcome {
            calls: 10,
            correct: 10,
            mismatches: Vec::new(),
            missing: Vec::new(),
            by_outcome: BTreeMap::new(),
            poison_expected: 4,
            poison_leaked: Vec::new(),
            platform_expected: 3,
            platform_leaked: Vec::new(),
            dead_letter_queue: "failed".into(),
            dead_lettered: Some(4),
            dead_letter_copies: None,
            complete_after_publish: Some(Duration::from_secs(1)),
            waited: Duration::from_secs(1),
        }
    }

    #[test]
    fn a_platform_event_logged_or_dead_lettered_fails_the_storm() {
        assert!(clean().passed());
        let logged = Outcome {
            platform_leaked: vec!["storm-1-platform-000000@198.51.100.7".into()],
            ..clean()
        };
        assert!(!logged.passed());
        let dead_lettered = Outcome {
            dead_lettered: Some(5),
            ..clean()
        };
        assert!(!dead_lettered.passed());
        assert_eq!(dead_lettered.to_json(1)["passed"], false);
        // Fewer dead letters than poison: the queue may have a consumer or a length limit.
        for dead_lettered in [Some(2), None] {
            assert!(
                Outcome {
                    dead_lettered,
                    ..clean()
                }
                .passed()
            );
        }
    }
}
