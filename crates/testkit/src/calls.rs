//! The tests' synthetic calls and what the record of a complete one must be.

use cdr_storm::simulate::SyntheticCall;
use chrono::{DateTime, Utc};

use crate::rows::Row;

/// The start of every test's synthetic calls (microsecond precision, as PostgreSQL stores it).
pub fn t0() -> DateTime<Utc> {
    "2025-09-24T10:01:02.123456Z".parse().unwrap()
}

/// A synthetic call `{id}@198.51.100.7` starting at [`t0`].
pub fn call(id: &str) -> SyntheticCall {
    SyntheticCall::new(format!("{id}@198.51.100.7"), t0())
}

/// What the record of a complete `SyntheticCall` must be, whatever the order its events came in.
pub fn assert_full_record(r: &Row, c: &SyntheticCall) {
    let at = |d: std::time::Duration| Some(c.start + chrono::Duration::from_std(d).unwrap());
    assert_eq!(r.status.as_deref(), Some("COMPLETED"), "{}", c.call_id);
    assert_eq!(r.disposition.as_deref(), Some("ANSWERED"), "{}", c.call_id);
    assert_eq!(r.start_time, Some(c.start), "{}", c.call_id);
    assert_eq!(r.answer_time, at(c.answer_after), "{}", c.call_id);
    assert_eq!(r.end_time, at(c.answer_after + c.talk), "{}", c.call_id);
    assert_eq!(
        r.duration_seconds,
        Some(c.talk.as_secs() as i32),
        "{}",
        c.call_id
    );
    assert_eq!(r.user_id.map(|u| u.to_string()), Some(c.user_id.clone()));
    assert_eq!(r.contact_id, Some(42));
    assert_eq!(r.tenant_id.as_deref(), Some(c.tenant_id.as_str()));
    assert_eq!(r.caller_number.as_deref(), Some("905551234567"));
    assert_eq!(r.callee_number.as_deref(), Some("902124440000"));
    assert_eq!(r.end_reason.as_deref(), Some("normal_clearing"));
    assert_eq!(r.sip_hangup_cause, Some(200), "answered: its 200 OK");
    assert_eq!(r.trace_id.as_deref(), Some(c.trace_id.as_str()));
    assert_eq!(
        r.recording_url.as_deref(),
        Some(format!("s3://recordings/{}/{}.wav", c.tenant_id, c.call_id).as_str())
    );
    assert_eq!(r.inferred_times, None, "{}", c.call_id);
}
