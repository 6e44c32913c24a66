//! The `usage_records` lines of a call, defined once: the columns the service writes (in the
//! platform's shape: `tenant_id`, `service_name`, `quantity numeric(15,5)`, `calculated_cost
//! numeric(10,5)`, `recorded_at`), the line as written (`UsageRow`, from the fold's
//! `UsageLine`s), and the statements that replace a call's lines.
//!
//! A call's lines are exactly those of its current record: the writer replaces them in the
//! transaction that writes the `calls` row, and only for the calls whose row that write changed
//! (a stale version changes neither). Lines another service wrote (no `usage_key`) are never
//! touched; where such a service already wrote the telephony minutes of a call, this service
//! does not add its own. Pure: this module builds statements, it runs none.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::Postgres;
use sqlx::postgres::PgArguments;
use std::sync::LazyLock;

use sqlx::query::{Query, QueryAs};

use cdr_core::merge::{TELEPHONY_KEY, TELEPHONY_MINUTE, UsageLine};

use crate::row::{Column, fit, fits_numeric};

/// The tenant a line is billed to when no event of its call named one: the platform's
/// "unknown" tenant (`tenant_id` is NOT NULL in `usage_records`).
pub const UNKNOWN_TENANT: &str = "system";

/// The columns of `usage_records` the service writes, in the order `replace` binds them.
pub const USAGE_COLUMNS: &[Column] = &[
    Column {
        name: "tenant_id",
        array_type: "text",
        max_chars: Some(255),
    },
    Column {
        name: "call_id",
        array_type: "text",
        max_chars: None,
    },
    Column {
        name: "usage_key",
        array_type: "text",
        max_chars: None,
    },
    Column {
        name: "service_name",
        array_type: "text",
        max_chars: Some(100),
    },
    Column {
        name: "resource_type",
        array_type: "text",
        max_chars: Some(50),
    },
    Column {
        name: "quantity",
        array_type: "numeric",
        max_chars: None,
    },
    Column {
        name: "calculated_cost",
        array_type: "numeric",
        max_chars: None,
    },
    Column {
        name: "recorded_at",
        array_type: "timestamptz",
        max_chars: None,
    },
];

/// `usage_records.quantity`: numeric(15,5).
const QUANTITY: (u32, u32) = cdr_core::merge::QUANTITY_COLUMN;
/// `usage_records.calculated_cost` and `calls.total_cost`: numeric(10,5).
pub const COST: (u32, u32) = cdr_core::merge::COST_COLUMN;

/// One `usage_records` line as the service writes it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct UsageRow {
    pub tenant_id: String,
    pub call_id: String,
    pub usage_key: String,
    pub service_name: String,
    pub resource_type: String,
    pub quantity: Decimal,
    pub calculated_cost: Option<Decimal>,
    pub recorded_at: DateTime<Utc>,
}

impl UsageRow {
    /// The line of `line` for the call `call_id` billed to `tenant_id`, cut to its columns.
    /// None when its quantity does not fit `numeric(15,5)`: no real usage is that large, and
    /// the line would make the whole statement fail. A cost beyond `numeric(10,5)` is left out.
    pub fn from_line(call_id: &str, tenant_id: Option<&str>, line: &UsageLine) -> Option<Self> {
        let quantity = line.quantity.round_dp(QUANTITY.1);
        if !fits_numeric(quantity, QUANTITY) {
            return None;
        }
        let text = |value: &str, column: usize| {
            let max = USAGE_COLUMNS[column].max_chars.unwrap_or(usize::MAX);
            fit(Some(value), max).unwrap_or_default().to_owned()
        };
        Some(UsageRow {
            tenant_id: text(tenant_id.unwrap_or(UNKNOWN_TENANT), 0),
            call_id: call_id.to_owned(),
            usage_key: line.key.clone(),
            service_name: text(&line.service, 3),
            resource_type: text(&line.resource_type, 4),
            quantity,
            calculated_cost: line.cost.filter(|c| fits_numeric(*c, COST)),
            recorded_at: line.at,
        })
    }

    /// Replaces the lines of `call_ids` with `rows` (`DELETE_SQL`, then `INSERT_SQL`), two
    /// statements to run in the transaction that writes those calls' rows.
    pub fn replace<'a>(
        call_ids: &'a [&'a str],
        rows: Vec<UsageRow>,
    ) -> [Query<'a, Postgres, PgArguments>; 2] {
        let mut columns: [Vec<String>; 5] = Default::default();
        let mut quantity = Vec::with_capacity(rows.len());
        let mut cost = Vec::with_capacity(rows.len());
        let mut at = Vec::with_capacity(rows.len());
        for r in rows {
            columns[0].push(r.tenant_id);
            columns[1].push(r.call_id);
            columns[2].push(r.usage_key);
            columns[3].push(r.service_name);
            columns[4].push(r.resource_type);
            quantity.push(r.quantity);
            cost.push(r.calculated_cost);
            at.push(r.recorded_at);
        }
        let [tenant, call, key, service, resource] = columns;
        [
            sqlx::query(DELETE_SQL).bind(call_ids),
            sqlx::query(INSERT_SQL.as_str())
                .bind(tenant)
                .bind(call)
                .bind(key)
                .bind(service)
                .bind(resource)
                .bind(quantity)
                .bind(cost)
                .bind(at),
        ]
    }
}

/// Removes the lines this service wrote for the calls `$1` (another service's lines have no
/// `usage_key`).
pub const DELETE_SQL: &str =
    "DELETE FROM usage_records WHERE call_id = ANY($1::text[]) AND usage_key IS NOT NULL";

/// Inserts lines given as one array per column (`USAGE_COLUMNS`). The telephony-minute line is
/// left out for a call whose telephony minutes another service already wrote.
pub static INSERT_SQL: LazyLock<String> = LazyLock::new(|| {
    let names = USAGE_COLUMNS
        .iter()
        .map(|c| c.name)
        .collect::<Vec<_>>()
        .join(", ");
    let arrays = USAGE_COLUMNS
        .iter()
        .enumerate()
        .map(|(i, c)| format!("${}::{}[]", i + 1, c.array_type))
        .collect::<Vec<_>>()
        .join(", ");
    let updates = USAGE_COLUMNS
        .iter()
        .filter(|c| c.name != "call_id" && c.name != "usage_key")
        .map(|c| format!("{0} = EXCLUDED.{0}", c.name))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "INSERT INTO usage_records ({names}) \
         SELECT {names} FROM UNNEST({arrays}) AS l({names}) \
         WHERE l.usage_key <> '{TELEPHONY_KEY}' OR NOT EXISTS ( \
           SELECT 1 FROM usage_records o WHERE o.call_id = l.call_id \
             AND o.usage_key IS NULL AND o.resource_type = '{TELEPHONY_MINUTE}') \
         ON CONFLICT (call_id, usage_key) DO UPDATE SET {updates}"
    )
});

/// The lines this service wrote (another service's have no `usage_key`).
const SELECT_SQL: &str = "SELECT tenant_id, call_id, usage_key, service_name, resource_type, \
     quantity, calculated_cost, recorded_at FROM usage_records WHERE usage_key IS NOT NULL";

/// Reads back the lines this service wrote for a call, in key order.
pub fn by_call(call_id: &str) -> QueryAs<'_, Postgres, UsageRow, PgArguments> {
    static SQL: LazyLock<String> =
        LazyLock::new(|| format!("{SELECT_SQL} AND call_id = $1 ORDER BY usage_key COLLATE \"C\""));
    sqlx::query_as(SQL.as_str()).bind(call_id)
}

/// Reads back the lines this service wrote for several calls, by call and key.
pub fn by_calls<'a>(call_ids: &'a [&'a str]) -> QueryAs<'a, Postgres, UsageRow, PgArguments> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!("{SELECT_SQL} AND call_id = ANY($1) ORDER BY call_id, usage_key COLLATE \"C\"")
    });
    sqlx::query_as(SQL.as_str()).bind(call_ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(quantity: &str, cost: Option<&str>) -> UsageLine {
        UsageLine {
            key: "id:u1".into(),
            service: "s".repeat(150),
            resource_type: "llm_token".into(),
            quantity: quantity.parse().unwrap(),
            cost: cost.map(|c| c.parse().unwrap()),
            at: DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_line_is_cut_to_its_columns_and_billed_to_the_unknown_tenant_without_one() {
        let row = UsageRow::from_line("c1", None, &line("1.234567", Some("0.5"))).unwrap();
        assert_eq!(row.tenant_id, UNKNOWN_TENANT);
        assert_eq!(row.service_name.chars().count(), 100);
        assert_eq!(row.quantity.to_string(), "1.23457");
        assert_eq!(row.calculated_cost, Some("0.5".parse().unwrap()));
    }

    #[test]
    fn numbers_beyond_their_columns_leave_the_line_or_its_cost_out() {
        assert!(UsageRow::from_line("c1", Some("t"), &line("10000000000", None)).is_none());
        let row = UsageRow::from_line("c1", Some("t"), &line("9999999999.99999", Some("100000")))
            .unwrap();
        assert_eq!(row.calculated_cost, None);
        let row = UsageRow::from_line("c1", Some("t"), &line("1", Some("-99999.99999"))).unwrap();
        assert!(row.calculated_cost.is_some());
    }

    #[test]
    fn the_insert_names_every_column_once_in_order() {
        let names: Vec<&str> = USAGE_COLUMNS.iter().map(|c| c.name).collect();
        let list = names.join(", ");
        assert!(INSERT_SQL.starts_with(&format!("INSERT INTO usage_records ({list}) ")));
        assert!(INSERT_SQL.contains(&format!("AS l({list})")));
        assert_eq!(USAGE_COLUMNS[0].name, "tenant_id");
        assert_eq!(USAGE_COLUMNS[3].name, "service_name");
        assert_eq!(USAGE_COLUMNS[4].name, "resource_type");
    }
}
