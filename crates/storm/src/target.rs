//! The service a storm or a simulated call is aimed at. This crate knows the service only
//! through this trait: the service implements it for its settings, so `cdr-service storm` and
//! `cdr-service simulate` read the same configuration as `cdr-service run`, and this crate does
//! not depend on the service's.

use std::time::Duration;

use cdr_core::event::Limits;
use sqlx::PgPool;

/// An error from the implementor of [`Target::database`].
pub type TargetError = Box<dyn std::error::Error + Send + Sync>;

/// Where the service reads its events and writes its records, and the settings that decide
/// when it writes them.
pub trait Target {
    /// The RabbitMQ connection string.
    fn amqp_url(&self) -> &str;
    /// The exchange the service's queue is bound to: storms and simulated calls go there.
    fn exchange(&self) -> &str;
    /// The service's queue (a storm's late phase waits for it to drain).
    fn queue(&self) -> &str;
    /// Where the service dead-letters bad input (a storm counts its poison there).
    fn dead_letter_queue(&self) -> &str;
    /// The service's input limits: a storm's poison messages must exceed them.
    fn limits(&self) -> Limits;
    /// How long after a call's end its record is written.
    fn linger(&self) -> Duration;
    /// How long after its last event a call without an end is written as timed out.
    fn idle_timeout(&self) -> Duration;
    /// A pool on the service's database, made as the service makes its own. Called only by
    /// what reads records back, so a storm without `--verify` never needs a database.
    fn database(&self) -> Result<PgPool, TargetError>;
}
