//! The chart: goodput by case and tool as grouped bars (median, whiskers for the range, the
//! value above each bar, "n/a" for a tool this binary lacks), a PNG drawn with plotters and a
//! font compiled in, so no system font is needed.

use std::path::Path;

use anyhow::Result;

use super::{BenchArgs, Case, machine::Machine, stats::Sums};

/// Draws the goodput of every tool in every case as grouped bars into the PNG at `path`; the
/// legend names the tools as results.md does (`machine`'s labels).
pub fn draw(path: &Path, args: &BenchArgs, machine: &Machine, sums: &Sums) -> Result<()> {
    use plotters::{
        prelude::*,
        style::text_anchor::{HPos, Pos, VPos},
    };
    // The font is compiled in (the `dejavu` crate): no system fonts needed.
    plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| anyhow::anyhow!("cannot load the chart font"))?;
    let (cases, tools) = (&args.cases, &args.tools);
    let top = sums
        .values()
        .filter_map(|s| s.goodput_max)
        .fold(10.0f64, f64::max)
        * 1.12;
    let root = BitMapBackend::new(path, (1100, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let (plot, legend) = root.split_horizontally(940);
    let n = cases.len() as f64;
    let case_label = |x: &f64| {
        let i = (x - 0.5).round();
        if (x - 0.5 - i).abs() > 1e-6 || i < 0.0 {
            return String::new();
        }
        cases
            .get(i as usize)
            .map_or(String::new(), |c| c.label().to_string())
    };
    let mut ch = ChartBuilder::on(&plot)
        .caption(
            format!(
                "goodput, {} MiB file over veth through a router, MTU {}, median of {} (whiskers: range)",
                args.size_mib, args.mtu, args.rounds
            ),
            ("sans-serif", 18),
        )
        .margin(14)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..n, 0.0..top)?;
    ch.configure_mesh()
        .disable_x_mesh()
        .x_labels(2 * cases.len() + 1)
        .x_label_formatter(&case_label)
        .y_desc("MB/s")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 15))
        .draw()?;
    let colors = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
    ];
    let value_style = ("sans-serif", 12)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Bottom));
    let w = 0.8 / tools.len() as f64;
    for (ti, tool) in tools.iter().enumerate() {
        let color = colors[ti % colors.len()];
        let of = |case: &Case| sums.get(&(*case, *tool));
        let x0 = |ci: usize| ci as f64 + 0.1 + ti as f64 * w;
        let mid = |ci: usize| x0(ci) + w * 0.45;
        ch.draw_series(cases.iter().enumerate().filter_map(|(ci, case)| {
            let g = of(case)?.goodput?;
            Some(Rectangle::new(
                [(x0(ci), 0.0), (x0(ci) + w * 0.9, g)],
                color.filled(),
            ))
        }))?;
        ch.draw_series(cases.iter().enumerate().filter_map(|(ci, case)| {
            let s = of(case)?;
            let (lo, hi) = (s.goodput_min?, s.goodput_max?);
            (hi > lo).then(|| PathElement::new(vec![(mid(ci), lo), (mid(ci), hi)], BLACK))
        }))?;
        ch.draw_series(cases.iter().enumerate().filter_map(|(ci, case)| {
            let s = of(case)?;
            let (text, y) = if s.na {
                ("n/a".to_string(), 0.0)
            } else {
                (format!("{:.0}", s.goodput?), s.goodput_max?)
            };
            Some(Text::new(
                text,
                (mid(ci), y + top * 0.01),
                value_style.clone(),
            ))
        }))?;
    }
    // The legend beside the plot, so that no bar hides behind it.
    for (ti, tool) in tools.iter().enumerate() {
        let y = 60 + ti as i32 * 26;
        legend.draw(&Rectangle::new(
            [(8, y), (24, y + 16)],
            colors[ti % colors.len()].filled(),
        ))?;
        legend.draw(&Text::new(
            machine.label(*tool),
            (32, y + 1),
            ("sans-serif", 15).into_font(),
        ))?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{fixtures, stats::summarize};

    #[test]
    fn the_chart_draws_with_the_built_in_font() {
        let sums = summarize(&fixtures::runs(), 64 << 20);
        let dir = crate::workspace_root().join("target/bench-test");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("goodput.png");
        draw(&path, &fixtures::args(), &fixtures::machine(), &sums).unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() > 1000);
    }
}
