//! What both targets share: the limits, a receive time, non-zero prices.

use cdr_core::event::Limits;
use cdr_core::merge::PriceBook;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

/// The service's default limits.
pub const LIMITS: Limits = Limits {
    max_body_bytes: 1 << 20,
    max_json_depth: 32,
};

/// A fixed receive time, so that a run is repeatable.
pub fn received() -> DateTime<Utc> {
    DateTime::from_timestamp(1_780_000_000, 0).expect("a time")
}

/// Non-zero prices for every resource the events name, large enough that absurd quantities
/// overflow any column: the fold and the record must still not panic.
pub fn prices() -> PriceBook {
    let since = DateTime::from_timestamp(0, 0).expect("epoch");
    PriceBook::new(
        [
            "telephony_minute",
            "stt_second",
            "llm_token",
            "tts_character",
            "x",
        ]
        .into_iter()
        .map(|r| (r.to_owned(), since, Decimal::new(99_999_999, 3))),
    )
}
