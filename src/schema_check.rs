//! The schema check at start: the columns the service writes and reads, compared with what
//! the database has. On the platform's database other scripts create the tables, and a column
//! of another type (or one missing, or a NOT NULL column without a default that the service
//! does not write) would make every write of that table fail. The service then does not
//! become ready, and says which table and column, what it expects and what it found.
//!
//! `compare` is pure; `check` reads the catalogue.

use std::collections::HashMap;

use sqlx::PgPool;

/// PostgreSQL's names (`information_schema.columns.data_type`) of the types a column may have.
const TEXT: &[&str] = &["character varying", "text"];
const INT: &[&str] = &["integer"];
const BIGINT: &[&str] = &["bigint"];
const BOOL: &[&str] = &["boolean"];
const TIMESTAMPTZ: &[&str] = &["timestamp with time zone"];
const DATE: &[&str] = &["date"];
const NUMERIC: &[&str] = &["numeric"];
const UUID: &[&str] = &["uuid"];
const JSONB: &[&str] = &["jsonb"];
const BYTEA: &[&str] = &["bytea"];

/// A column's name and the types the service can work with.
type Column = (&'static str, &'static [&'static str]);

/// A column the service writes or reads, with the types it can work with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub table: &'static str,
    pub column: &'static str,
    pub types: &'static [&'static str],
}

/// A column as the database has it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Found {
    pub table: String,
    pub column: String,
    pub data_type: String,
    pub not_null: bool,
    pub has_default: bool,
}

/// A column the service cannot work with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{table}.{column}: expected {expected}, found {found}")]
pub struct Incompatible {
    pub table: String,
    pub column: String,
    pub expected: String,
    pub found: String,
}

/// The element type of an upsert array (`cdr_schema::row::COLUMNS`) as column types.
fn column_types(array_type: &str) -> &'static [&'static str] {
    match array_type {
        "int" => INT,
        "uuid" => UUID,
        "timestamptz" => TIMESTAMPTZ,
        "numeric" => NUMERIC,
        _ => TEXT,
    }
}

/// Every column the service writes or reads: `calls` and `usage_records` from their rows' one
/// definitions, the others as the log, the projector, the writer and the price query use them.
pub fn expected() -> Vec<Expected> {
    let defined = [
        ("calls", cdr_schema::row::COLUMNS),
        ("usage_records", cdr_schema::usage::USAGE_COLUMNS),
    ];
    let mut all: Vec<Expected> = defined
        .iter()
        .flat_map(|&(table, columns)| {
            columns.iter().map(move |c| Expected {
                table,
                column: c.name,
                types: column_types(c.array_type),
            })
        })
        .collect();
    for (column, types) in [("updated_at", TIMESTAMPTZ), ("adopted", BOOL)] {
        all.push(Expected {
            table: "calls",
            column,
            types,
        });
    }
    let others: [(&str, &[Column]); 5] = [
        (
            "call_events",
            &[
                ("event_id", BIGINT),
                ("call_id", TEXT),
                ("event_type", TEXT),
                ("event_timestamp", TIMESTAMPTZ),
                ("timestamp_inferred", BOOL),
                ("received_at", TIMESTAMPTZ),
                ("trace_id", TEXT),
                ("payload", JSONB),
                ("body_sha256", BYTEA),
                ("body", BYTEA),
                ("body_encoding", TEXT),
            ],
        ),
        (
            "open_calls",
            &[("call_id", TEXT), ("last_event_id", BIGINT)],
        ),
        (
            "quarantined_calls",
            &[
                ("call_id", TEXT),
                ("trace_id", TEXT),
                ("failures", INT),
                ("reason", TEXT),
            ],
        ),
        (
            "call_dialog_events",
            &[
                ("call_id", TEXT),
                ("turn_index", INT),
                ("user_text", TEXT),
                ("ai_text", TEXT),
                ("rag_sources", JSONB),
                ("stt_ms", INT),
                ("llm_ms", INT),
                ("tts_ms", INT),
                ("event_timestamp", TIMESTAMPTZ),
                ("body_sha256", BYTEA),
            ],
        ),
        (
            "cost_models",
            &[
                ("resource_type", TEXT),
                ("cost_per_unit", NUMERIC),
                ("start_date", DATE),
            ],
        ),
    ];
    for (table, columns) in others {
        for &(column, types) in columns {
            all.push(Expected {
                table,
                column,
                types,
            });
        }
    }
    all
}

/// The service's expectations against the columns found. Besides a column missing or of
/// another type, a NOT NULL column without a default that the service does not write would
/// refuse every row it inserts (`cost_models` excepted: the service only reads it).
pub fn compare(expected: &[Expected], found: &[Found]) -> Vec<Incompatible> {
    let by_name: HashMap<(&str, &str), &Found> = found
        .iter()
        .map(|f| ((f.table.as_str(), f.column.as_str()), f))
        .collect();
    let mut out = Vec::new();
    for e in expected {
        let expected = e.types.join(" or ");
        match by_name.get(&(e.table, e.column)) {
            None => out.push(Incompatible {
                table: e.table.to_owned(),
                column: e.column.to_owned(),
                expected,
                found: "no such column".to_owned(),
            }),
            Some(f) if !e.types.contains(&f.data_type.as_str()) => out.push(Incompatible {
                table: e.table.to_owned(),
                column: e.column.to_owned(),
                expected,
                found: f.data_type.clone(),
            }),
            Some(_) => {}
        }
    }
    for f in found {
        let written = expected
            .iter()
            .any(|e| e.table == f.table && e.column == f.column);
        if f.not_null && !f.has_default && !written && f.table != "cost_models" {
            out.push(Incompatible {
                table: f.table.clone(),
                column: f.column.clone(),
                expected: "a default, or NULL allowed (the service does not write it)".to_owned(),
                found: "NOT NULL without a default".to_owned(),
            });
        }
    }
    out
}

/// The columns of the service's tables as the database has them (in the connection's
/// schema), compared with what the service needs.
pub async fn check(pool: &PgPool) -> Result<Vec<Incompatible>, sqlx::Error> {
    let expected = expected();
    let mut tables: Vec<&str> = expected.iter().map(|e| e.table).collect();
    tables.dedup();
    let found: Vec<Found> = sqlx::query_as(
        "SELECT table_name::text AS table, column_name::text AS column, \
                data_type::text AS data_type, is_nullable = 'NO' AS not_null, \
                (column_default IS NOT NULL OR is_identity = 'YES' \
                 OR is_generated = 'ALWAYS') AS has_default \
         FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = ANY($1::text[])",
    )
    .bind(&tables)
    .fetch_all(pool)
    .await?;
    Ok(compare(&expected, &found))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(table: &str, column: &str, data_type: &str) -> Found {
        Found {
            table: table.to_owned(),
            column: column.to_owned(),
            data_type: data_type.to_owned(),
            not_null: false,
            has_default: false,
        }
    }

    #[test]
    fn a_column_missing_or_of_another_type_is_named() {
        let expected = [
            Expected {
                table: "calls",
                column: "duration_seconds",
                types: INT,
            },
            Expected {
                table: "calls",
                column: "end_reason",
                types: TEXT,
            },
            Expected {
                table: "calls",
                column: "tenant_id",
                types: TEXT,
            },
        ];
        let found = [
            found("calls", "duration_seconds", "text"),
            found("calls", "tenant_id", "character varying"),
        ];
        let problems = compare(&expected, &found);
        assert_eq!(
            problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [
                "calls.duration_seconds: expected integer, found text",
                "calls.end_reason: expected character varying or text, found no such column",
            ]
        );
    }

    #[test]
    fn a_not_null_column_the_service_does_not_write_needs_a_default() {
        let mut tenant = found("usage_records", "tenant_id", "character varying");
        tenant.not_null = true;
        let mut recorded = found("usage_records", "recorded_at", "timestamp with time zone");
        recorded.not_null = true;
        recorded.has_default = true;
        let problems = compare(&[], &[tenant, recorded]);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].column, "tenant_id");
        assert_eq!(problems[0].found, "NOT NULL without a default");
    }

    #[test]
    fn every_column_of_the_defined_rows_is_expected() {
        let expected = expected();
        for (table, columns) in [
            ("calls", cdr_schema::row::COLUMNS),
            ("usage_records", cdr_schema::usage::USAGE_COLUMNS),
        ] {
            for c in columns {
                assert!(
                    expected
                        .iter()
                        .any(|e| e.table == table && e.column == c.name),
                    "{table}.{}",
                    c.name
                );
            }
        }
    }
}
