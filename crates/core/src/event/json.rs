//! The JSON wire format (older producers): a UTF-8 object with camelCase keys.

use serde_json::{Map, Value};

use super::{CallIdField, Limits, Parsed, Reject, parse_timestamp};

/// Reads a JSON body's envelope; its content is the object itself.
pub(super) fn parse(body: &[u8], limits: Limits) -> Result<Parsed, Reject> {
    let text = std::str::from_utf8(body).map_err(|e| Reject::InvalidUtf8(e.valid_up_to()))?;
    let object = parse_any_object(text, limits)?;
    let event_type = match object.get("eventType") {
        None | Some(Value::Null) => return Err(Reject::MissingEventType),
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(other) => return Err(Reject::InvalidEventType(describe(other))),
    };
    let call_id = match object.get("callId") {
        None | Some(Value::Null) => CallIdField::Absent,
        Some(Value::String(s)) => CallIdField::Text(s.clone()),
        Some(other) => CallIdField::Invalid(json_type_name(other)),
    };
    let timestamp = match object.get("timestamp") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => parse_timestamp(s).map(Some),
        Some(other) => Err(Reject::BadTimestamp(describe(other))),
    };
    let trace_id = ["traceId", "trace_id"]
        .iter()
        .find_map(|k| object.get(*k).and_then(Value::as_str))
        .map(str::to_owned);
    Ok(Parsed {
        event_type,
        call_id,
        trace_id,
        timestamp,
        holds_nul: holds_nul(text, &object),
        content: object,
    })
}

/// Parses a JSON object under the depth limit, refusing NUL characters (which the log's
/// `jsonb` cannot store): a protobuf event's `payload_json`.
pub(super) fn parse_object(text: &str, limits: Limits) -> Result<Map<String, Value>, Reject> {
    let object = parse_any_object(text, limits)?;
    if holds_nul(text, &object) {
        return Err(Reject::NulCharacter);
    }
    Ok(object)
}

/// Parses a JSON object under the depth limit.
fn parse_any_object(text: &str, limits: Limits) -> Result<Map<String, Value>, Reject> {
    check_depth(text.as_bytes(), limits.max_json_depth)?;
    let value: Value = serde_json::from_str(text).map_err(|e| Reject::NotJson(e.to_string()))?;
    match value {
        Value::Object(object) => Ok(object),
        other => Err(Reject::NotObject(json_type_name(&other))),
    }
}

/// Rejects nesting deeper than `max` without building anything: a cheap guard that runs
/// before the parser, so a hostile body cannot make the parser recurse. Strings are skipped
/// with `memchr` to their closing quote (brackets inside them do not count); most of a body is
/// strings, so most of it is never looked at byte by byte.
fn check_depth(bytes: &[u8], max: usize) -> Result<(), Reject> {
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        i += 1;
        match b {
            b'"' => loop {
                match memchr::memchr2(b'"', b'\\', &bytes[i..]) {
                    // An escape: skip the escaped character too.
                    Some(j) if bytes[i + j] == b'\\' => i = (i + j + 2).min(bytes.len()),
                    Some(j) => {
                        i += j + 1;
                        break;
                    }
                    // Unterminated: the parser says why.
                    None => return Ok(()),
                }
            },
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return Err(Reject::TooDeep(max));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Whether a parsed body holds a NUL character. JSON has no raw control characters in
/// strings, so a NUL can only come from the escape `\u0000`: a body without that sequence
/// (nearly all of them) is not walked.
fn holds_nul(text: &str, object: &Map<String, Value>) -> bool {
    memchr::memmem::find(text.as_bytes(), b"\\u0000").is_some() && has_nul(object)
}

/// Whether any key or string in the object holds a NUL character.
pub(super) fn has_nul(object: &Map<String, Value>) -> bool {
    fn value_has_nul(v: &Value) -> bool {
        match v {
            Value::String(s) => s.contains('\0'),
            Value::Array(a) => a.iter().any(value_has_nul),
            Value::Object(o) => has_nul(o),
            _ => false,
        }
    }
    object
        .iter()
        .any(|(k, v)| k.contains('\0') || value_has_nul(v))
}

pub(super) fn json_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn describe(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 64 {
        let mut cut = 64;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    format!("{} {s}", json_type_name(v))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{LIMITS, now};
    use super::super::{Reject, decode};
    use super::*;

    #[test]
    fn depth_guard_ignores_brackets_inside_strings() {
        let body = format!(
            r#"{{"eventType":"x","callId":"c","note":"{}"}}"#,
            "[".repeat(100)
        );
        assert!(decode(body.as_bytes(), now(), LIMITS).is_ok());
        let deep = format!(
            r#"{{"eventType":"x","callId":"c","n":{}1{}}}"#,
            "[".repeat(40),
            "]".repeat(40)
        );
        assert_eq!(
            decode(deep.as_bytes(), now(), LIMITS).unwrap_err(),
            Reject::TooDeep(32)
        );
    }

    /// The depth guard as it was first written, byte by byte: the reference for the fast one.
    fn reference_depth(bytes: &[u8], max: usize) -> Result<(), Reject> {
        let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
        for &b in bytes {
            if in_string {
                match (escaped, b) {
                    (true, _) => escaped = false,
                    (false, b'\\') => escaped = true,
                    (false, b'"') => in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'{' | b'[' => {
                    depth += 1;
                    if depth > max {
                        return Err(Reject::TooDeep(max));
                    }
                }
                b'}' | b']' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        Ok(())
    }

    proptest::proptest! {
        /// Any bytes, weighted to the ones the guard cares about: same verdict as the reference.
        #[test]
        fn depth_guard_agrees_with_the_byte_by_byte_reference(
            body in proptest::collection::vec(
                proptest::sample::select(b"{}[]\"\\ab:,".to_vec()), 0..200),
            max in 0usize..8,
        ) {
            proptest::prop_assert_eq!(check_depth(&body, max), reference_depth(&body, max));
        }
    }

    #[test]
    fn nul_is_found_only_where_a_string_holds_one() {
        let nul = br#"{"eventType":"x","callId":"c","note":"a\u0000b"}"#;
        assert_eq!(
            decode(nul, now(), LIMITS).unwrap_err(),
            Reject::NulCharacter
        );
        let key = br#"{"eventType":"x","callId":"c","k\u0000":1}"#;
        assert_eq!(
            decode(key, now(), LIMITS).unwrap_err(),
            Reject::NulCharacter
        );
        // An escaped backslash followed by the text `u0000` is no NUL.
        let text = br#"{"eventType":"x","callId":"c","note":"a\\u0000b"}"#;
        assert!(decode(text, now(), LIMITS).is_ok());
    }
}
