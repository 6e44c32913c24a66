//! The service's `/metrics`, scraped and read: the Prometheus text format, one sample a line
//! (`name{labels} value`), comments starting with `#`.

/// The `/metrics` text of the service listening on `port`.
pub async fn scrape(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Every sample of a scrape: (series, value), the series as written (name and labels).
pub fn samples(text: &str) -> impl Iterator<Item = (&str, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.trim(), value.trim().parse().ok()?))
        })
}

/// The value of one series, e.g. `cdr_active_calls{state="answered"}`; None when absent.
pub fn value(text: &str, series: &str) -> Option<f64> {
    samples(text).find_map(|(s, v)| (s == series).then_some(v))
}

/// The sum of every series of metric `name`, whatever their labels (0 when it is absent).
pub fn sum(text: &str, name: &str) -> f64 {
    samples(text)
        .filter(|(s, _)| {
            s.strip_prefix(name)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('{'))
        })
        .map(|(_, v)| v)
        .sum()
}

/// The sum of every series of metric `name` on the /metrics of the service listening on
/// `port` (0 when it is absent).
pub async fn metric_at(port: u16, name: &str) -> f64 {
    sum(&scrape(port).await, name)
}
