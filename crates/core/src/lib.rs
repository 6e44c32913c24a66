//! The pure core of the call-detail-record service: [`event`] decodes what producers send,
//! [`merge`] folds a call's events into its record. Neither does I/O or reads a clock, so the
//! service, the storm tool and the tests share one definition of both; [`redact`] takes the
//! secrets out of connection strings before anything prints them.

pub mod event;
mod meaning;
pub mod merge;
pub mod proto;
pub mod redact;
