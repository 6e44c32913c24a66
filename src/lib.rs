//! cdr-service: the platform's call-detail-record service.
//!
//! Call events flow one way: [`ingest`] (RabbitMQ) -> [`log`] (`call_events`) -> [`tracker`]
//! (one actor per active call, folding with [`merge`]) -> [`writer`] (`calls`).
//! See `ARCHITECTURE.md` for the codemap and the invariants.

pub use cdr_core::{event, merge};
pub use cdr_schema::{row, usage};

pub mod app;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod db;
pub mod dispatch;
pub mod health;
pub mod http;
pub mod ingest;
pub mod lease;
pub mod log;
pub mod prices;
pub mod project;
pub mod recovery;
pub mod retry;
pub mod runtime;
pub mod schema_check;
pub mod telemetry;
pub mod tracker;
pub mod writer;
