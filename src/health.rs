//! What readiness is made of: the database and the broker reachable, the schema one the
//! service can write, recovery done, and no table whose every row the database refuses.
//! Shared by the components that learn it and the HTTP probes that report it.

use std::collections::BTreeMap;
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
    /// The tables whose latest write the database refused row by row, with its error: set
    /// when not one row of a write could be written, cleared by the next write that succeeds.
    refused: Mutex<BTreeMap<&'static str, String>>,
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

    /// A write of `table` the database refused, every row of it, with `error`.
    pub fn set_write_refused(&self, table: &'static str, error: String) {
        gauge!(metric::WRITES_REFUSED.name, "table" => table).set(1.0);
        self.refused().insert(table, error);
    }

    /// A write of `table` that the database took (wholly or in part).
    pub fn set_write_succeeded(&self, table: &'static str) {
        let mut refused = self.refused();
        if refused.remove(table).is_some() {
            gauge!(metric::WRITES_REFUSED.name, "table" => table).set(0.0);
        }
    }

    /// The tables whose latest write was refused, and why.
    pub fn refused_writes(&self) -> BTreeMap<&'static str, String> {
        self.refused().clone()
    }

    fn refused(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, String>> {
        self.inner
            .refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
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
            && self.refused().is_empty()
    }
}
