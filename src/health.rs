//! What readiness is made of: the database reachable, the schema one the service can write, no
//! table whose every row the database refuses, and the instance's role: a standby (another
//! instance holds the lease) is ready; the active one once recovery is done and the broker
//! connected.
//! Shared by the components that learn it and the HTTP probes that report it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use metrics::gauge;

use crate::telemetry::metric;

/// What this instance is doing (`lease`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not yet known whether another instance holds the lease.
    Starting,
    /// Another instance holds the lease: connected and migrated, consuming nothing.
    Standby,
    /// This instance holds the lease: it consumes and writes.
    Active,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Starting, Role::Standby, Role::Active];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Starting => "starting",
            Role::Standby => "standby",
            Role::Active => "active",
        }
    }
}

#[derive(Clone, Default)]
pub struct Health {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    database_up: AtomicBool,
    broker_up: AtomicBool,
    recovered: AtomicBool,
    /// `Role` as its index in `Role::ALL`.
    role: AtomicU8,
    /// What the schema check found that the service cannot write (`schema_check`).
    schema_problems: Mutex<Vec<String>>,
    /// The tables whose latest write the database refused down to every single row, with its
    /// error: set when not one row of a write could be written, cleared by the next write that
    /// succeeds.
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

    /// The end of a write of `table` the database refused whole and that was then written row
    /// by row: a row written clears `table`; none written (the write not cut short) marks it
    /// refused with the last refusal.
    pub fn set_isolated_write(
        &self,
        table: &'static str,
        any_written: bool,
        finished: bool,
        last_refusal: String,
    ) {
        if any_written {
            self.set_write_succeeded(table);
        } else if finished {
            self.set_write_refused(table, last_refusal);
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

    pub fn set_role(&self, role: Role) {
        let index = Role::ALL.iter().position(|r| *r == role).unwrap_or(0);
        self.inner.role.store(index as u8, Ordering::Relaxed);
        for r in Role::ALL {
            gauge!(metric::CLUSTER_ROLE.name, "role" => r.as_str())
                .set(f64::from(u8::from(r == role)));
        }
    }

    pub fn role(&self) -> Role {
        Role::ALL[usize::from(self.inner.role.load(Ordering::Relaxed)).min(Role::ALL.len() - 1)]
    }

    /// The lease lost: a standby again, nothing recovered, no broker session, no write pending.
    pub fn stand_down(&self) {
        self.inner.recovered.store(false, Ordering::Relaxed);
        self.set_broker_up(false);
        for table in self.refused_writes().into_keys() {
            self.set_write_succeeded(table);
        }
        self.set_role(Role::Standby);
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
        let role_ready = match self.role() {
            Role::Starting => false,
            Role::Standby => true,
            Role::Active => self.broker_up() && self.recovered(),
        };
        role_ready
            && self.database_up()
            && self.schema_problems().is_empty()
            && self.refused().is_empty()
    }
}
