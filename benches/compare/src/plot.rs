//! `--plot PATH`: one-way throughput (payload bytes/s, median over rounds, log scale) against
//! message size (log scale), one line per peer, memcpy's line dashed as the floor. SVG only.

use std::path::Path;

use plotters::prelude::*;

use crate::harness::Result;
use crate::report::{BYTES, Kind, Report, stats};

/// A peer's line: its label, its kind, its (size, bytes/s) points.
type Line = (String, Kind, Vec<(f64, f64)>);

/// Writes the plot of `report`'s one-way tables to `path`.
pub fn write(report: &Report, path: &Path) -> Result<()> {
    // One line per row label, in the order the rows first appear.
    let mut lines: Vec<Line> = Vec::new();
    for b in &report.benches {
        let (Some(size), Some(col)) = (b.size, b.metrics.iter().position(|m| *m == BYTES)) else {
            continue;
        };
        for r in &b.rows {
            let Some(s) = stats(&r.values[col]) else {
                continue;
            };
            let label = if r.kind == Kind::Floor { format!("{} (floor)", r.label) } else { r.label.clone() };
            match lines.iter_mut().find(|l| l.0 == label) {
                Some(l) => l.2.push((size as f64, s.median)),
                None => lines.push((label, r.kind, vec![(size as f64, s.median)])),
            }
        }
    }
    if lines.is_empty() {
        return Err("no one-way figures to plot".into());
    }
    let ys = lines.iter().flat_map(|l| l.2.iter().map(|p| p.1));
    let (lo, hi) = ys.fold((f64::MAX, f64::MIN), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let (lo, hi) = (10f64.powf(lo.log10().floor()), 10f64.powf(hi.log10().ceil()));

    let root = SVGBackend::new(path, (1000, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("one-way throughput, separate pinned processes, payload written and checked", ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(90)
        .build_cartesian_2d(
            (4.0f64..2.0 * 1048576.0).log_scale().with_key_points(crate::runner::SIZES.map(|s| s as f64).to_vec()),
            (lo..hi).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("message size")
        .y_desc("payload bytes/s (median)")
        .x_label_formatter(&|v| size_label(*v))
        .y_label_formatter(&|v| crate::report::human(*v, "B/s"))
        .draw()?;
    for (i, (label, kind, pts)) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let style = color.stroke_width(if *kind == Kind::Ours { 3 } else { 2 });
        if *kind == Kind::Floor {
            chart
                .draw_series(DashedLineSeries::new(pts.iter().copied(), 6, 4, style))?
                .label(label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        } else {
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), style))?
                .label(label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn size_label(v: f64) -> String {
    let v = v.round() as u64;
    if v >= 1 << 20 && v.is_multiple_of(1 << 20) {
        format!("{} MiB", v >> 20)
    } else if v >= 1 << 10 && v.is_multiple_of(1 << 10) {
        format!("{} KiB", v >> 10)
    } else {
        format!("{v} B")
    }
}
