//! The `calls` row, defined once: its columns (name, the array type a batch is cast to, the
//! length a value is cut to), the row as the writer writes it and as it is read back
//! (`CallRow`), the upsert statement and its batch binding, and the `SELECT` that reads rows back.
//!
//! Everything is generated from the one list in `calls_row!`: adding a column is one line there
//! and one in `CallRow::from_record`. Pure: this module builds statements, it runs none.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::Postgres;
use sqlx::postgres::PgArguments;
use sqlx::query::QueryAs;
use uuid::Uuid;

use cdr_core::merge::CallRecord;

/// One column of `calls` as the service writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    /// The element type a batch's array of this column is cast to in the upsert's `UNNEST`.
    pub array_type: &'static str,
    /// The length in characters a value is cut to (`fit`), for the `varchar` columns that take
    /// producers' free text: a longer value would make the whole statement fail.
    pub max_chars: Option<usize>,
}

/// `calls.direction` when no event says: the platform's column default.
pub const DEFAULT_DIRECTION: &str = "INBOUND";

/// The conflict key of the upsert: every other column is replaced.
pub const KEY_COLUMN: &str = "call_id";

/// A row the upsert wrote: its call, and the tenant the row now has (an adopted row may keep
/// the replaced service's).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Written {
    pub call_id: String,
    pub tenant_id: Option<String>,
}

/// A field whose expected and found values differ (`CallRow::diff`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDiff {
    pub field: &'static str,
    pub expected: String,
    pub found: String,
}

/// Defines `CallRow`, `COLUMNS`, and the per-field code (cuts, batch binding, diff) from one
/// list of `field: RustType => "array type" [, max_chars N];`, in column order.
macro_rules! calls_row {
    ($(
        $(#[doc = $doc:literal])*
        $field:ident: $ty:ty => $array_type:literal $(, max_chars $max:literal)?;
    )*) => {
        /// A `calls` row: every column the service writes, as the writer writes it
        /// (`from_record`, `upsert`) and as it is read back (`by_id`, `by_ids`).
        #[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
        pub struct CallRow {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        /// The columns of `CallRow`, in order.
        pub const COLUMNS: &[Column] = &[
            $( Column {
                name: stringify!($field),
                array_type: $array_type,
                max_chars: calls_row!(@max $($max)?),
            }, )*
        ];

        impl CallRow {
            /// Cuts every value that has a column limit to fit it.
            fn cut_to_columns(&mut self) {
                $( $( cut(&mut self.$field, $max); )? )*
            }

            /// Binds a batch, one array per column in column order: `$1` is `COLUMNS[0]`.
            fn bind_batch(
                query: QueryAs<'static, Postgres, Written, PgArguments>,
                rows: Vec<CallRow>,
            ) -> QueryAs<'static, Postgres, Written, PgArguments> {
                $( let mut $field: Vec<$ty> = Vec::with_capacity(rows.len()); )*
                for row in rows {
                    $( $field.push(row.$field); )*
                }
                query $( .bind($field) )*
            }

            /// Every field in which `found` differs from `self` (the expected row), in column
            /// order, values shown with `Debug`.
            pub fn diff(&self, found: &CallRow) -> Vec<FieldDiff> {
                let mut out = Vec::new();
                $(
                    if self.$field != found.$field {
                        out.push(FieldDiff {
                            field: stringify!($field),
                            expected: format!("{:?}", self.$field),
                            found: format!("{:?}", found.$field),
                        });
                    }
                )*
                out
            }
        }
    };
    (@max) => { None };
    (@max $max:literal) => { Some($max) };
}

calls_row! {
    call_id: String => "text";
    trace_id: Option<String> => "text", max_chars 255;
    user_id: Option<Uuid> => "uuid";
    contact_id: Option<i32> => "int";
    tenant_id: Option<String> => "text", max_chars 255;
    start_time: Option<DateTime<Utc>> => "timestamptz";
    answer_time: Option<DateTime<Utc>> => "timestamptz";
    end_time: Option<DateTime<Utc>> => "timestamptz";
    duration_seconds: Option<i32> => "int";
    billable_seconds: Option<i32> => "int";
    status: Option<String> => "text";
    disposition: Option<String> => "text";
    recording_url: Option<String> => "text";
    total_cost: Option<Decimal> => "numeric";
    /// NOT NULL in the platform's table: `INBOUND`, its default, when no event says.
    direction: String => "text";
    caller_number: Option<String> => "text", max_chars 50;
    callee_number: Option<String> => "text", max_chars 50;
    /// A SIP response code.
    sip_hangup_cause: Option<i32> => "int";
    /// The end event's reason (a column of this service's own).
    end_reason: Option<String> => "text", max_chars 64;
    hangup_source: Option<String> => "text";
    inferred_times: Option<String> => "text";
    /// Figures the record could not keep (`cdr_core::merge::ANOMALIES`; a column of this
    /// service's own).
    anomalies: Option<String> => "text";
    /// Distinct logged events folded into the row: its version.
    event_count: i32 => "int";
}

/// Upserts a batch of rows given as one array per column. A row only replaces one folded from
/// at most as many events (`event_count` is its version), so a late or out-of-order write never
/// makes a record go backwards; `updated_at` says when it last changed.
pub static UPSERT_SQL: LazyLock<String> = LazyLock::new(|| {
    let names = column_list();
    let arrays = COLUMNS
        .iter()
        .enumerate()
        .map(|(i, c)| format!("${}::{}[]", i + 1, c.array_type))
        .collect::<Vec<_>>()
        .join(", ");
    // A row another service wrote (`event_count` 0: this service always folds at least one
    // event) is adopted: from then on its inherited columns keep their value wherever the
    // fold has none.
    let adopted = "(c.adopted OR c.event_count = 0)";
    let replaced = COLUMNS
        .iter()
        .filter(|c| c.name != KEY_COLUMN)
        .map(|c| {
            if INHERITED_COLUMNS.contains(&c.name) {
                format!(
                    "{0} = CASE WHEN {adopted} THEN COALESCE(EXCLUDED.{0}, c.{0}) ELSE EXCLUDED.{0} END, ",
                    c.name
                )
            } else {
                format!("{0} = EXCLUDED.{0}, ", c.name)
            }
        })
        .collect::<String>();
    format!(
        "INSERT INTO calls AS c ({names}) SELECT * FROM UNNEST({arrays}) \
         ON CONFLICT ({KEY_COLUMN}) DO UPDATE SET {replaced}adopted = {adopted}, \
           updated_at = now() \
         WHERE c.event_count <= EXCLUDED.event_count \
         RETURNING {KEY_COLUMN}, tenant_id"
    )
});

/// The columns a row written by the service this one replaced keeps where the fold has no
/// value: what that service knew of a call in progress at the switch (its start, tenant,
/// numbers and user), which the events logged before the switch may not carry.
pub const INHERITED_COLUMNS: [&str; 6] = [
    "start_time",
    "tenant_id",
    "caller_number",
    "callee_number",
    "user_id",
    "contact_id",
];

/// Every column of `calls` the service writes, in order, for reading rows back.
pub static SELECT_SQL: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {} FROM calls", column_list()));

/// The column names in order, comma-separated.
fn column_list() -> String {
    COLUMNS
        .iter()
        .map(|c| c.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `SELECT_SQL` for one call: `$1` is its id.
static SELECT_ONE_SQL: LazyLock<String> =
    LazyLock::new(|| format!("{} WHERE {KEY_COLUMN} = $1", *SELECT_SQL));

/// `SELECT_SQL` for several calls: `$1` is an array of ids.
static SELECT_MANY_SQL: LazyLock<String> =
    LazyLock::new(|| format!("{} WHERE {KEY_COLUMN} = ANY($1)", *SELECT_SQL));

impl CallRow {
    /// The row the writer writes for `record` folded from `event_count` distinct events: the
    /// record's values, cut to their columns.
    pub fn from_record(r: &CallRecord, event_count: i32) -> CallRow {
        let mut row = CallRow {
            call_id: r.call_id.clone(),
            trace_id: r.trace_id.clone(),
            user_id: r.user_id,
            contact_id: r.contact_id,
            tenant_id: r.tenant_id.clone(),
            start_time: r.start_time,
            answer_time: r.answer_time,
            end_time: r.end_time,
            duration_seconds: r.duration_seconds,
            billable_seconds: r.billable_seconds,
            status: Some(r.status.as_str().to_owned()),
            disposition: Some(r.disposition.as_str().to_owned()),
            recording_url: r.recording_url.clone(),
            // A cost beyond its column is left out rather than refusing the record.
            total_cost: r
                .total_cost
                .filter(|c| fits_numeric(*c, crate::usage::COST)),
            direction: r
                .direction
                .clone()
                .unwrap_or_else(|| DEFAULT_DIRECTION.to_owned()),
            caller_number: r.caller_number.clone(),
            callee_number: r.callee_number.clone(),
            sip_hangup_cause: r.sip_hangup_cause,
            end_reason: r.end_reason.clone(),
            hangup_source: r.hangup_source.clone(),
            inferred_times: r.inferred_times.clone(),
            anomalies: r.anomalies.clone(),
            event_count,
        };
        row.cut_to_columns();
        row
    }

    /// The upsert (`UPSERT_SQL`) of `rows`, bound and ready to run; it returns the rows it
    /// wrote (a stale version writes nothing). The rows must have distinct call ids: one
    /// statement cannot change a row twice.
    pub fn upsert(rows: Vec<CallRow>) -> QueryAs<'static, Postgres, Written, PgArguments> {
        CallRow::bind_batch(sqlx::query_as(UPSERT_SQL.as_str()), rows)
    }

    /// Reads the row of `call_id` back (none when the call has no row).
    pub fn by_id(call_id: &str) -> QueryAs<'_, Postgres, CallRow, PgArguments> {
        sqlx::query_as(SELECT_ONE_SQL.as_str()).bind(call_id)
    }

    /// Reads the rows of `call_ids` back; calls without a row are simply missing.
    pub fn by_ids<'a>(call_ids: &'a [&'a str]) -> QueryAs<'a, Postgres, CallRow, PgArguments> {
        sqlx::query_as(SELECT_MANY_SQL.as_str()).bind(call_ids)
    }
}

/// `value` cut to at most `max_chars` characters, on a character boundary: a value longer than
/// its `varchar` column would make the whole statement fail (here and in `usage_records`), so it
/// is cut to fit; the full value stays in the raw event.
pub fn fit(value: Option<&str>, max_chars: usize) -> Option<&str> {
    value.map(|v| match v.char_indices().nth(max_chars) {
        Some((cut, _)) => &v[..cut],
        None => v,
    })
}

pub use cdr_core::merge::fits_numeric;

/// Cuts an owned value in place to at most `max_chars` characters, as `fit` does.
fn cut(value: &mut Option<String>, max_chars: usize) {
    let keep = fit(value.as_deref(), max_chars).map(str::len);
    if let (Some(v), Some(keep)) = (value.as_mut(), keep) {
        v.truncate(keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cdr_core::merge::{Disposition, Status};

    /// The part of `sql` between `start` and the next `end`.
    fn between<'a>(sql: &'a str, start: &str, end: &str) -> &'a str {
        let from = sql.find(start).expect(start) + start.len();
        let len = sql[from..].find(end).expect(end);
        &sql[from..from + len]
    }

    fn names() -> Vec<&'static str> {
        COLUMNS.iter().map(|c| c.name).collect()
    }

    #[test]
    fn every_column_once_and_in_the_same_order_in_each_list() {
        let mut distinct = names();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), COLUMNS.len(), "a column is listed twice");

        let inserted: Vec<&str> = between(&UPSERT_SQL, "INSERT INTO calls AS c (", ") SELECT")
            .split(", ")
            .collect();
        assert_eq!(inserted, names());

        let arrays: Vec<String> = between(&UPSERT_SQL, "UNNEST(", ") ON CONFLICT")
            .split(", ")
            .map(str::to_owned)
            .collect();
        let want: Vec<String> = COLUMNS
            .iter()
            .enumerate()
            .map(|(i, c)| format!("${}::{}[]", i + 1, c.array_type))
            .collect();
        assert_eq!(arrays, want);

        let replaced = between(&UPSERT_SQL, "DO UPDATE SET ", " WHERE c.event_count");
        let adopted = "(c.adopted OR c.event_count = 0)";
        let mut want: Vec<String> = names()
            .into_iter()
            .filter(|n| *n != KEY_COLUMN)
            .map(|n| {
                if INHERITED_COLUMNS.contains(&n) {
                    format!(
                        "{n} = CASE WHEN {adopted} THEN COALESCE(EXCLUDED.{n}, c.{n}) ELSE EXCLUDED.{n} END"
                    )
                } else {
                    format!("{n} = EXCLUDED.{n}")
                }
            })
            .collect();
        want.push(format!("adopted = {adopted}"));
        want.push("updated_at = now()".to_owned());
        assert_eq!(replaced, want.join(", "));
        for inherited in INHERITED_COLUMNS {
            assert!(names().contains(&inherited), "{inherited} is a column");
        }
        assert!(UPSERT_SQL.contains(&format!("ON CONFLICT ({KEY_COLUMN})")));
        assert!(
            UPSERT_SQL.ends_with(
                "WHERE c.event_count <= EXCLUDED.event_count RETURNING call_id, tenant_id"
            )
        );

        let selected: Vec<&str> = between(&SELECT_SQL, "SELECT ", " FROM calls")
            .split(", ")
            .collect();
        assert_eq!(selected, names());
        assert_eq!(
            *SELECT_MANY_SQL,
            format!("{} WHERE call_id = ANY($1)", *SELECT_SQL)
        );
    }

    #[test]
    fn the_key_is_the_first_column() {
        assert_eq!(COLUMNS[0].name, KEY_COLUMN);
    }

    #[test]
    fn fit_cuts_on_character_boundaries() {
        assert_eq!(fit(None, 3), None);
        assert_eq!(fit(Some("abc"), 3), Some("abc"));
        assert_eq!(fit(Some("abcd"), 3), Some("abc"));
        assert_eq!(fit(Some("çğüş"), 2), Some("çğ"));
    }

    #[test]
    fn a_row_is_the_record_cut_to_its_columns() {
        let long = "é".repeat(300);
        let record = CallRecord {
            call_id: "c1".to_owned(),
            trace_id: Some(long.clone()),
            user_id: None,
            contact_id: Some(7),
            tenant_id: Some("t".to_owned()),
            start_time: None,
            answer_time: None,
            end_time: None,
            duration_seconds: Some(3),
            billable_seconds: None,
            status: Status::TimedOut,
            disposition: Disposition::NoAnswer,
            recording_url: Some(long.clone()),
            total_cost: None,
            direction: None,
            caller_number: Some(long.clone()),
            callee_number: None,
            sip_hangup_cause: None,
            end_reason: Some(long.clone()),
            hangup_source: None,
            inferred_times: Some("start".to_owned()),
            anomalies: None,
        };
        let row = CallRow::from_record(&record, 4);
        assert_eq!(row.trace_id.as_deref(), Some("é".repeat(255).as_str()));
        assert_eq!(row.caller_number.as_deref(), Some("é".repeat(50).as_str()));
        assert_eq!(row.end_reason.as_deref(), Some("é".repeat(64).as_str()));
        assert_eq!(row.direction, DEFAULT_DIRECTION, "the platform's default");
        assert_eq!(
            row.recording_url.as_deref(),
            Some(long.as_str()),
            "a text column"
        );
        assert_eq!(row.status.as_deref(), Some("TIMED_OUT"));
        assert_eq!(row.disposition.as_deref(), Some("NO_ANSWER"));
        assert_eq!(row.event_count, 4);

        let mut other = row.clone();
        other.contact_id = None;
        other.event_count = 5;
        let fields: Vec<&str> = row.diff(&other).iter().map(|d| d.field).collect();
        assert_eq!(fields, ["contact_id", "event_count"]);
    }
}
