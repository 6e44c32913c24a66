//! What readiness is made of: the database and the broker reachable, the schema one the
//! service can write, recovery done.
//! Shared by the components that learn it and the HTTP probes that report it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use metrics::gauge;

use crate::telemetry::metric;

#[derive(Clone, Default)]
pub struct Health {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    database_up: AtomicBool,
    broker_up: AtomicBool,
    recovered: AtomicBool,
    /// What the schema check found that the service cannot write (`schema_check`).
    schema_problems: Mutex<Vec<String>>,
}

impl Health {
    pub fn set_database_up(&self, up: bool) {
        self.inner.database_up.store(up, Ordering::Relaxed);
        gauge!(metric::DATABASE_UP.name).set(f64::from(u8::from(up)));
    }

    pub fn set_broker_up(&self, up: bool) {
        self.inner.broker_up.store(up, Ordering::Relaxed);
        gauge!(metric::BROKER_UP.name).set(f64::from(u8::from(up)));
    }

    /// The schema check's findings: none when the service can write every column it needs.
    pub fn set_schema_problems(&self, problems: Vec<String>) {
        gauge!(metric::SCHEMA_INCOMPATIBLE_COLUMNS.name).set(problems.len() as f64);
        *self
            .inner
            .schema_problems
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = problems;
    }

    pub fn schema_problems(&self) -> Vec<String> {
        self.inner
            .schema_problems
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set_recovered(&self) {
        self.inner.recovered.store(true, Ordering::Relaxed);
    }

    pub fn database_up(&self) -> bool {
        self.inner.database_up.load(Ordering::Relaxed)
    }

    pub fn broker_up(&self) -> bool {
        self.inner.broker_up.load(Ordering::Relaxed)
    }

    pub fn recovered(&self) -> bool {
        self.inner.recovered.load(Ordering::Relaxed)
    }

    pub fn ready(&self) -> bool {
        self.database_up()
            && self.broker_up()
            && self.recovered()
            && self.schema_problems().is_empty()
    }
}
