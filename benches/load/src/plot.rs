//! PNG plots: latency vs delivery rate (fanout) and server memory vs connections (idle), one line
//! per result (label). Text needs a TrueType font; DejaVu Sans is looked up at the usual paths.
use crate::util::R;
use plotters::prelude::*;
use serde_json::Value;
use std::path::Path;
use std::sync::Once;

const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

fn init_font() -> R<()> {
    static ONCE: Once = Once::new();
    let mut res: R<()> = Ok(());
    ONCE.call_once(|| {
        res = (|| {
            let path = FONTS
                .iter()
                .find(|p| Path::new(p).exists())
                .ok_or("no TrueType font found (install fonts-dejavu-core)")?;
            let bytes: &'static [u8] = Box::leak(std::fs::read(path)?.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| "bad font file")?;
            Ok(())
        })();
    });
    res
}

fn label(v: &Value) -> String {
    let l = v["label"].as_str().unwrap_or("");
    if l.is_empty() {
        v["url"].as_str().unwrap_or("?").to_string()
    } else {
        l.to_string()
    }
}

type Series = Vec<(String, Vec<(f64, f64)>)>;

pub fn plot_all(dir: &Path, runs: &[Value]) -> R<()> {
    init_font()?;
    std::fs::create_dir_all(dir)?;
    fn pick<'a>(runs: &'a [Value], scenario: &'static str) -> impl Iterator<Item = &'a Value> + 'a {
        runs.iter().filter(move |r| r["scenario"] == scenario)
    }
    // fanout: p99 and p50 latency against achieved deliveries/s, per payload size
    let mut sizes: Vec<u64> = pick(runs, "fanout")
        .filter_map(|r| r["size"].as_u64())
        .collect();
    sizes.sort();
    sizes.dedup();
    for size in sizes {
        for (q, key) in [("p99", "p99_ms"), ("p50", "p50_ms")] {
            let series: Series = pick(runs, "fanout")
                .filter(|r| r["size"].as_u64() == Some(size))
                .map(|r| {
                    let pts = r["steps"]
                        .as_array()
                        .map(|s| s.as_slice())
                        .unwrap_or(&[])
                        .iter()
                        .filter_map(|s| {
                            Some((s["deliveries_per_s"].as_f64()?, s["latency"][key].as_f64()?))
                        })
                        .filter(|(x, y)| *x > 0.0 && *y > 0.0)
                        .collect();
                    (label(r), pts)
                })
                .collect();
            let subs = pick(runs, "fanout")
                .next()
                .and_then(|r| r["subscribers"].as_u64())
                .unwrap_or(0);
            line_chart(
                &dir.join(format!("fanout_{q}_{size}B.png")),
                &format!("fan-out, {subs} subscribers, {size} B: {q} publish-to-deliver latency"),
                "deliveries/s (achieved)",
                &format!("{q} latency (ms)"),
                &series,
                true,
            )?;
        }
    }
    // idle: server RSS against open connections
    let series: Series = pick(runs, "idle")
        .map(|r| {
            let pts = r["samples"]
                .as_array()
                .map(|s| s.as_slice())
                .unwrap_or(&[])
                .iter()
                .filter_map(|s| Some((s["connections"].as_f64()?, s["rss_kb"].as_f64()? / 1024.0)))
                .collect();
            // several runs of one server (5k and 19k) must stay apart in the legend
            let n = r["connections"].as_u64().unwrap_or(0);
            (format!("{} ({}k)", label(r), n / 1000), pts)
        })
        .collect();
    if !series.is_empty() {
        line_chart(
            &dir.join("idle_memory.png"),
            "server RSS vs idle connections (2 subscriptions each)",
            "connections",
            "RSS (MiB)",
            &series,
            false,
        )?;
    }
    Ok(())
}

fn line_chart(path: &Path, title: &str, xd: &str, yd: &str, series: &Series, log: bool) -> R<()> {
    let all: Vec<(f64, f64)> = series.iter().flat_map(|s| s.1.iter().copied()).collect();
    if all.is_empty() {
        return Ok(());
    }
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in &all {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    let root = BitMapBackend::new(path, (1100, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut b = ChartBuilder::on(&root);
    b.caption(title, ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80);
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(xd)
                .y_desc(yd)
                .label_style(("sans-serif", 14))
                .draw()?;
            for (i, (name, pts)) in series.iter().enumerate() {
                let color = Palette99::pick(i).to_rgba();
                chart
                    .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
                    .label(name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
                chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .label_font(("sans-serif", 15))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()?;
        }};
    }
    if log {
        draw!(b.build_cartesian_2d(
            (x0 * 0.8..x1 * 1.25).log_scale(),
            (y0 * 0.8..y1 * 1.25).log_scale()
        )?);
    } else {
        draw!(b.build_cartesian_2d(0.0..x1 * 1.05, 0.0..y1 * 1.1)?);
    }
    root.present()?;
    Ok(())
}
