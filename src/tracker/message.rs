//! `CallMsg`: what a call actor is sent, by the routing map, its own timers, the tracker's
//! graceful stop and the live view.

use ractor::RpcReplyPort;

use super::snapshot::LiveCall;
use crate::log::LoggedEvent;

pub enum CallMsg {
    /// Committed events of this call, in log order (one dispatched batch's worth). Only the
    /// routing map sends them, counting them as it does (see `map`).
    Events(Vec<LoggedEvent>),
    /// A timer fired: check the deadline.
    Tick,
    /// The service is stopping: write the record if the call has ended, then stop.
    Shutdown,
    Inspect(RpcReplyPort<LiveCall>),
}
