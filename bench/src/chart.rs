//! The sweep's chart: deliveries per second and p99 latency against connection count, for
//! the gateway and the baseline, as a PNG.

use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::load::Fanout;

/// Where the chart's font is read from (Debian's `fonts-dejavu-core`).
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Draws `runs` (one line per server) into `path`.
pub fn draw(runs: &[Fanout], path: &str) -> Result<(), String> {
    let font = std::fs::read(FONT)
        .map_err(|e| format!("{FONT}: {e} (apt-get install fonts-dejavu-core)"))?;
    // plotters keeps fonts for the life of the process.
    register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| "the font does not load".to_owned())?;

    let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(600);
    let servers = ["gateway", "baseline"];
    let colors = [RED, BLUE];
    let max_conn = runs.iter().map(|r| r.connections).max().unwrap_or(1) as f64;
    let max_rate = runs
        .iter()
        .map(|r| r.deliveries_per_sec)
        .fold(1.0, f64::max)
        * 1.1;
    let max_p99 = runs.iter().map(|r| r.p99_ms).fold(1.0, f64::max) * 1.1;

    let panels = [
        (&left, "Deliveries per second", max_rate, "deliveries/s"),
        (&right, "Publish-to-delivery p99 latency", max_p99, "ms"),
    ];
    for (i, (area, title, max_y, unit)) in panels.into_iter().enumerate() {
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(95)
            .build_cartesian_2d(0.0..max_conn * 1.05, 0.0..max_y)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("connections")
            .y_desc(unit)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| {
                if i == 0 {
                    format!("{:.0}k", y / 1000.0)
                } else {
                    format!("{y:.0}")
                }
            })
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| e.to_string())?;
        for (server, color) in servers.iter().zip(colors) {
            let mut points: Vec<(f64, f64)> = runs
                .iter()
                .filter(|r| r.server == *server)
                .map(|r| {
                    (
                        r.connections as f64,
                        if i == 0 {
                            r.deliveries_per_sec
                        } else {
                            r.p99_ms
                        },
                    )
                })
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(*server)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(
                    points
                        .into_iter()
                        .map(|p| Circle::new(p, 4, color.filled())),
                )
                .map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}
