//! The WAN chart: goodput as a share of the link rate against the RTT, one panel per loss
//! rate, one line per tool (a hollow mark for a run cut off, nothing for a failed one).

use std::path::Path;

use anyhow::Result;

use super::{WanTool, report::Findings};

pub fn draw(path: &Path, f: &Findings) -> Result<()> {
    use plotters::prelude::*;
    plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| anyhow::anyhow!("cannot load the chart font"))?;
    let losses = &f.args.wan_loss;
    let rtts = &f.args.wan_rtts;
    let max_rtt = rtts.iter().copied().max().unwrap_or(100) as f64 * 1.08;
    let root =
        BitMapBackend::new(path, (420 * losses.len().max(1) as u32 + 40, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, rest) = root.split_vertically(40);
    title.draw(&Text::new(
        format!(
            "goodput over a {} Mbit/s delay line, {} MiB, share of the link rate",
            f.args.wan_rate_mbit, f.args.wan_size_mib
        ),
        (20, 10),
        ("sans-serif", 18).into_font(),
    ))?;
    let (panels, legend) = rest.split_vertically(440);
    let colors = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
    ];
    let tools = &f.args.wan_tools;
    for (panel, &loss) in panels
        .split_evenly((1, losses.len().max(1)))
        .iter()
        .zip(losses)
    {
        let mut ch = ChartBuilder::on(panel)
            .caption(format!("{loss} % loss each way"), ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(45)
            .build_cartesian_2d(0.0..max_rtt, 0.0..100.0)?;
        ch.configure_mesh()
            .x_desc("RTT, ms")
            .y_desc("% of link")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .label_style(("sans-serif", 13))
            .draw()?;
        for (ti, &tool) in tools.iter().enumerate() {
            let color = colors[ti % colors.len()];
            let points: Vec<(f64, f64, bool)> = f
                .runs
                .iter()
                .filter(|r| {
                    r.tool == tool
                        && !r.case.burst
                        && r.case.loss_pct == loss
                        && r.outcome.is_measured()
                })
                .filter_map(|r| {
                    Some((
                        r.case.rtt_ms as f64,
                        r.goodput_share? * 100.0,
                        r.partial_bytes.is_some(),
                    ))
                })
                .collect();
            ch.draw_series(LineSeries::new(
                points.iter().map(|&(x, y, _)| (x, y)),
                color.stroke_width(2),
            ))?;
            ch.draw_series(points.iter().map(|&(x, y, cut)| {
                let style = if cut {
                    color.stroke_width(2)
                } else {
                    color.filled()
                };
                Circle::new((x, y), 4, style)
            }))?;
        }
    }
    for (ti, tool) in tools.iter().enumerate() {
        let x = 20 + ti as i32 * 200;
        legend.draw(&Rectangle::new(
            [(x, 12), (x + 16, 28)],
            colors[ti % colors.len()].filled(),
        ))?;
        legend.draw(&Text::new(
            label(*tool),
            (x + 22, 13),
            ("sans-serif", 15).into_font(),
        ))?;
    }
    root.present()?;
    Ok(())
}

fn label(t: WanTool) -> &'static str {
    match t {
        WanTool::ChunkXdp => "chunk (XDP), cold",
        WanTool::ChunkXdpWarm => "chunk (XDP), warm",
        WanTool::TcpCubic => "TCP CUBIC",
        WanTool::TcpBbr => "TCP BBR",
        WanTool::Uftp => "UFTP (-R link rate)",
    }
}
