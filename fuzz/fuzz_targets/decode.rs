//! Arbitrary bytes through the decoder (the first byte picks the content-type hint). A body
//! either is refused with a reason or decodes to an event whose every stored field fits its
//! column, which decodes to the same event when read back from the log, and which folds into a
//! record with non-zero prices without panicking.

#![no_main]

mod common;

use cdr_core::event::{self, Format, MAX_CALL_ID_LEN, MAX_EVENT_TYPE_LEN, MAX_TRACE_ID_LEN};
use cdr_core::merge::{CallEvent, CallState};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((first, body)) = data.split_first() else {
        return;
    };
    let Ok(e) = event::decode_hinted(body, hint(*first), common::received(), common::LIMITS) else {
        return;
    };
    // `call_events` and `calls`: varchar(255) ids, varchar(100) event types, no NUL anywhere.
    assert!(!e.call_id.trim().is_empty());
    assert!(e.call_id.chars().count() <= MAX_CALL_ID_LEN);
    assert!(!e.call_id.chars().any(char::is_control));
    assert!(!e.event_type.trim().is_empty());
    assert!(e.event_type.chars().count() <= MAX_EVENT_TYPE_LEN);
    assert!(!e.event_type.contains('\0'));
    if let Some(trace) = &e.trace_id {
        assert!(trace.chars().count() <= MAX_TRACE_ID_LEN);
        assert!(!trace.contains('\0'));
    }
    // `payload` is jsonb: a JSON object.
    let payload: serde_json::Value =
        serde_json::from_str(e.payload_json()).expect("the payload is JSON");
    assert!(payload.is_object(), "the payload is an object");
    // Live equals rebuilt from the log (the stored bytes, the format found, the receive time).
    let live = CallEvent::from(e.clone());
    let rebuilt = CallEvent::from_logged(&e.body, Some(e.format), e.received_at, None)
        .expect("a logged body decodes again");
    assert_eq!(live, rebuilt, "live and rebuilt differ");
    // The fold and the record never panic, whatever the figures.
    let state = CallState::fold([&live]);
    let _ = state.record_and_usage(&e.call_id, &common::prices());
});

/// The hint a first byte picks: none, JSON or protobuf, as content types announce them.
fn hint(byte: u8) -> Option<Format> {
    match byte % 3 {
        0 => None,
        1 => Some(Format::Json),
        _ => Some(Format::Protobuf),
    }
}
