//! The scaling chart: entries/s against thread count for single appends and batches, each
//! engine a line, the plain `pwrite` loop a flat reference. Written as SVG and PNG.

use std::io;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::engine::EngineKind;
use crate::workload::{Op, RunResult};

/// Font files tried in order: the charts need one to lay out their text.
const FONT_CANDIDATES: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
];

/// Registers a system font as `sans-serif` with plotters (whose font registry is its own,
/// process-wide); false if none was found. Called once per chart: the bench draws one.
fn ensure_font() -> bool {
    FONT_CANDIDATES.iter().any(|path| {
        std::fs::read(path).is_ok_and(|bytes| {
            // plotters keeps registered fonts for the life of the process: leak the one file.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
        })
    })
}

/// One line of a panel.
struct Series {
    label: String,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

/// Points (threads, M entries/s) of the successful runs `pred` picks.
fn points(results: &[RunResult], pred: impl Fn(&RunResult) -> bool) -> Vec<(f64, f64)> {
    let mut pts: Vec<(f64, f64)> = results
        .iter()
        .filter(|r| r.ok() && pred(r))
        .map(|r| (r.spec.threads as f64, r.entries_per_sec() / 1e6))
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    pts
}

fn color(engine: EngineKind) -> RGBColor {
    match engine {
        EngineKind::Walrus => RGBColor(0x1f, 0x77, 0xb4),
        EngineKind::WalrusRust => RGBColor(0xd6, 0x27, 0x28),
        EngineKind::Disk => RGBColor(0x70, 0x70, 0x70),
        #[cfg(feature = "rocksdb")]
        EngineKind::RocksDb => RGBColor(0x2c, 0xa0, 0x2c),
        #[cfg(feature = "okaywal")]
        EngineKind::OkayWal => RGBColor(0x94, 0x67, 0xbd),
    }
}

/// The series of one panel: every engine of `group`, and the plain `pwrite` loop (one entry
/// per call, a file per thread) as the disk's reference.
fn panel_series(results: &[RunResult], group: &str) -> Vec<Series> {
    let mut engines: Vec<EngineKind> = Vec::new();
    for r in results {
        if r.engine != EngineKind::Disk && !engines.contains(&r.engine) {
            engines.push(r.engine);
        }
    }
    // One workload per panel: the group's first (the sweep), not a row beside it (the
    // appends on the mmap backend).
    let name = results
        .iter()
        .find(|r| r.spec.group == group)
        .map(|r| r.spec.name.as_str());
    let mut series: Vec<Series> = engines
        .into_iter()
        .map(|e| Series {
            label: e.to_string(),
            color: color(e),
            points: points(results, |r| {
                r.engine == e && r.spec.group == group && Some(r.spec.name.as_str()) == name
            }),
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    let disk = points(results, |r| r.spec.op == Op::pwrite(1, false));
    if !series.is_empty() && !disk.is_empty() {
        series.push(Series {
            label: "disk: plain pwrite per entry".into(),
            color: color(EngineKind::Disk),
            points: disk,
        });
    }
    series
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    series: &[Series],
) -> Result<(), String> {
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let (x_lo, x_hi) = xs.fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)));
    let y_hi = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max);
    if x_lo > x_hi {
        return Ok(()); // nothing measured for this panel
    }
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((x_lo - 0.2)..(x_hi + 0.2), 0.0..(y_hi * 1.15).max(0.001))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("threads")
        .y_desc("M entries/s")
        .x_labels(((x_hi - x_lo) as usize + 1).min(16))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(err)?;
    for s in series {
        let c = s.color;
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2)))
            .map_err(err)?
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], c.stroke_width(2)));
        chart
            .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, c.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    Ok(())
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    results: &[RunResult],
) -> Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let batch_name = results
        .iter()
        .find(|r| r.spec.group == "batch-writes")
        .map_or("batches".to_string(), |r| r.spec.name.clone());
    let fsync = results
        .iter()
        .find(|r| r.spec.group == "writes")
        .map_or(String::new(), |r| format!(", fsync {}", r.spec.fsync));
    let panels = root.split_evenly((1, 2));
    draw_panel(
        &panels[0],
        &format!("single appends{fsync}"),
        &panel_series(results, "writes"),
    )?;
    draw_panel(
        &panels[1],
        &format!("{batch_name}{fsync}"),
        &panel_series(results, "batch-writes"),
    )?;
    root.present().map_err(|e| e.to_string())
}

/// Writes `scaling.svg` and `scaling.png` into `out_dir`; returns the files written.
///
/// # Errors
/// `NotFound` when no font could be loaded (the charts need one), or a drawing error.
pub fn scaling_chart(results: &[RunResult], out_dir: &Path) -> io::Result<Vec<PathBuf>> {
    if !ensure_font() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "no font for the charts (tried {})",
                FONT_CANDIDATES.join(", ")
            ),
        ));
    }
    std::fs::create_dir_all(out_dir)?;
    let size = (1200, 480);
    let svg = out_dir.join("scaling.svg");
    draw(SVGBackend::new(&svg, size).into_drawing_area(), results).map_err(io::Error::other)?;
    let png = out_dir.join("scaling.png");
    draw(BitMapBackend::new(&png, size).into_drawing_area(), results).map_err(io::Error::other)?;
    Ok(vec![svg, png])
}
