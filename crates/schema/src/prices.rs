//! Unit prices as `cost_models` keeps them.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::Postgres;
use sqlx::postgres::PgArguments;
use sqlx::query::QueryAs;

/// A price row: the resource type, from when the price holds, the price of one unit.
pub type PriceRow = (String, DateTime<Utc>, Decimal);

/// Every price in `cost_models`; `cdr_core::merge::PriceBook::new` takes the rows. The
/// platform keeps `start_date` as a `date`: a price holds from 00:00 UTC of that day.
pub fn select() -> QueryAs<'static, Postgres, PriceRow, PgArguments> {
    sqlx::query_as(
        "SELECT resource_type, (start_date::timestamp AT TIME ZONE 'UTC') AS start_date, \
                cost_per_unit::numeric \
         FROM cost_models",
    )
}
