//! The tables of cdr-service as it writes and reads them, defined once for the service, the
//! storm verifier and the tests: the `calls` row ([`row`]), a call's usage lines ([`usage`])
//! and the unit prices ([`prices`]).
//! Builds statements; the caller runs them.

pub mod prices;
pub mod row;
pub mod usage;
