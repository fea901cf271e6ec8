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

/// The median of each setup's runs (by name): deliveries per second, p50 and p99, and
/// Redis commands per publish; printed as a table and returned for the JSON.
pub fn print_medians(runs: &[Fanout]) -> serde_json::Value {
    let mut names: Vec<&str> = runs.iter().map(|r| r.server.as_str()).collect();
    names.dedup();
    names.sort_unstable();
    names.dedup();
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(0.0)
    };
    println!(
        "{:<26} {:>5} {:>13} {:>8} {:>8} {:>14}",
        "median of", "runs", "deliveries/s", "p50 ms", "p99 ms", "redis cmd/pub"
    );
    let mut out = serde_json::Map::new();
    for name in names {
        let of: Vec<&Fanout> = runs.iter().filter(|r| r.server == name).collect();
        let rate = median(of.iter().map(|r| r.deliveries_per_sec).collect());
        let p50 = median(of.iter().map(|r| r.p50_ms).collect());
        let p99 = median(of.iter().map(|r| r.p99_ms).collect());
        let commands: Vec<f64> = of
            .iter()
            .filter_map(|r| r.redis_commands_per_publish)
            .collect();
        let commands = (!commands.is_empty()).then(|| median(commands));
        println!(
            "{name:<26} {:>5} {rate:>13.0} {p50:>8.2} {p99:>8.2} {:>14}",
            of.len(),
            commands.map_or_else(|| "-".to_owned(), |c| format!("{c:.1}"))
        );
        out.insert(
            name.to_owned(),
            serde_json::json!({"runs": of.len(), "deliveries_per_sec": rate, "p50_ms": p50,
                "p99_ms": p99, "redis_commands_per_publish": commands}),
        );
    }
    serde_json::Value::Object(out)
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
