//! Load-test tooling for the call-detail-record service, behind its `storm` and `simulate`
//! subcommands, the tests and the benches. `cdr-service storm`: a synthetic event storm for
//! load tests, published to the configured exchange with publisher confirms, optionally
//! verified record by record.
//!
//! - [`Target`]: what this crate needs to know about the service (the service implements it
//!   for its settings).
//! - [`simulate`]: one synthetic call (`cdr-service simulate`), [`simulate::SyntheticCall`]
//!   and the confirming [`simulate::Publisher`] the tests use.
//! - [`StormOptions`]: the command line of `cdr-service storm`; [`run`] runs it.
//! - [`generate`](mod@generate): the pure, seeded generator. Every call of the storm and its ground truth
//!   (the expected record by the merge rules: `CallState::fold` over the call's distinct
//!   bodies, decoded as the service decodes them).
//! - `protobuf`: the protobuf twin of a JSON event, as today's producers publish it; the
//!   storm and `simulate` send either.
//! - [`publish`]: pipelined publisher confirms, rate limiting, progress bar.
//! - [`verify`]: waits for the records and compares each with its ground truth.
//!
//! Ground truth and receive times: an event without timestamp stands on its receive time,
//! which the generator cannot know. The producers' timestamp-less forms (EVENTS.md) are
//! `call.started` from the typed producer, `call.terminate.request` and the alias
//! `user.created.for_call`. The last two are generated only where their time cannot change
//! the record (the call always has a `call.started`; an alias identification is the call's only
//! identification), and the generator proves it per call by folding with two receive times far
//! apart. A call whose `call.started` has no timestamp is folded again at verification, with
//! the receive time the row shows (`start_time`, when `inferred_times` says `start`): so every
//! other field is still compared exactly, the start time is checked to lie within the storm's
//! own publish window, and the duration may differ by one second (the row keeps microseconds).

pub mod generate;
mod options;
mod outcome;
pub mod protobuf;
pub mod publish;
mod run;
pub mod simulate;
mod target;
pub mod verify;

use cdr_core::event::Limits;
pub use generate::{
    DurationDist, Message, MessageKind, PlatformEvent, PoisonClass, Storm, generate,
};
pub use options::{StormOptions, options_json};
pub use run::run;
pub use target::{Target, TargetError};

/// The service's limits, as the poison messages must exceed them.
pub fn limits(target: &dyn Target) -> Limits {
    target.limits()
}
