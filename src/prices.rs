//! Unit prices: read from `cost_models` at start and every minute after, shared with the call
//! actors (which price records with them) through one slot that a refresh swaps whole.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::merge::PriceBook;

/// How often unit prices are re-read from `cost_models`.
const REFRESH: Duration = Duration::from_secs(60);

/// The current price book; readers clone the `Arc` and price with it, unaffected by a refresh.
pub type Prices = Arc<RwLock<Arc<PriceBook>>>;

/// Reads every price in `cost_models`.
pub async fn load(pool: &PgPool) -> Result<PriceBook, sqlx::Error> {
    Ok(PriceBook::new(
        cdr_schema::prices::select().fetch_all(pool).await?,
    ))
}

/// The prices as they are now, or none if they cannot be read (a refresh tries again).
pub async fn initial(pool: &PgPool) -> Prices {
    let book = load(pool).await.unwrap_or_else(|e| {
        warn!(error = %e, "could not read cost_models; calls are priced once a refresh succeeds");
        PriceBook::default()
    });
    Arc::new(RwLock::new(Arc::new(book)))
}

/// Re-reads the prices every `REFRESH` until `stop` fires; keeps the previous ones when the
/// database cannot be read.
pub async fn refresh(pool: PgPool, prices: Prices, stop: CancellationToken) {
    let mut tick = tokio::time::interval(REFRESH);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        match load(&pool).await {
            Ok(book) => {
                if let Ok(mut slot) = prices.write() {
                    *slot = Arc::new(book);
                }
            }
            Err(e) => {
                warn!(error = %e, "could not refresh cost_models; keeping the previous prices")
            }
        }
    }
}
