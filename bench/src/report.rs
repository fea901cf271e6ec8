//! What a scenario prints and writes: the fan-out table, ratios between runs, the JSON.

use crate::load::Fanout;

/// The name a run without history is reported under: its server's name and this.
pub const NO_HISTORY_SUFFIX: &str = "-no-history";

/// The fan-out runs as a table.
pub fn print_fanout(runs: &[Fanout]) {
    println!(
        "{:<15} {:>6} {:>5} {:>6} {:>10} {:>5} {:>5} {:>13} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "server",
        "conns",
        "pubs",
        "bytes",
        "delivered",
        "lost",
        "dup",
        "deliveries/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "pub ms",
        "cli cpu%",
        "srv cpu%"
    );
    for r in runs {
        println!(
            "{:<15} {:>6} {:>5} {:>6} {:>10} {:>5} {:>5} {:>13.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.0} {:>8.0}",
            r.server,
            r.connections,
            r.publishes,
            r.size,
            r.deliveries,
            r.lost,
            r.duplicated,
            r.deliveries_per_sec,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.publish_ms,
            r.client_cpu_pct,
            r.server_cpu_pct
        );
    }
}

/// Deliveries per second of run `over` as a fraction of run `under`'s.
pub fn ratio(runs: &[Fanout], over: &str, under: &str) -> Option<f64> {
    let rate = |name: &str| {
        runs.iter()
            .find(|r| r.server == name)
            .map(|r| r.deliveries_per_sec)
    };
    Some(rate(over)? / rate(under)?)
}

/// Prints and returns what history costs: deliveries per second with it, as a fraction of
/// those without it, for the run named `name`.
pub fn history_ratio(runs: &[Fanout], name: &str) -> Option<f64> {
    let without = format!("{name}{NO_HISTORY_SUFFIX}");
    let r = ratio(runs, name, &without)?;
    println!(
        "{name}: history on / off deliveries per second: {:.0}%",
        r * 100.0
    );
    Some(r)
}

/// Writes the figures to `path`, when one was given.
pub fn write_json(path: Option<&str>, value: &serde_json::Value) {
    if let Some(path) = path {
        let text = serde_json::to_string_pretty(value).expect("figures serialize");
        std::fs::write(path, text).unwrap_or_else(|e| panic!("cannot write {path}: {e}"));
        println!("figures written to {path}");
    }
}
