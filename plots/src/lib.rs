//! # plots: PNG charts of run records
//!
//! One chart, four panels on a shared time axis (minutes):
//!
//! 1. **allocation** in cores: the summed CPU limits. With one run, stacked by Tower target
//!    group (or by service, the largest eight and "other", when the record has `services.csv`
//!    and per-service stacking is asked for); with several runs, one line each;
//! 2. **RPS** per minute;
//! 3. **P99 latency** per minute against the SLO line;
//! 4. the **Tower's targets** (group 1 solid, group 2 dashed).
//!
//! Several runs overlay for comparison (say K8s-CPU against Autothrottle on one trace).
//!
//! [`per_second`] draws what `services.csv` holds instead: per service, usage and throttle
//! ratio second by second, for one or more series (a record, and its re-simulation by a
//! fitted model, say).
//! Text needs a TrueType font: [`find_font`] looks in the usual system places (DejaVu,
//! Liberation, Noto, FreeFont) or takes `AUTOTHROTTLE_FONT`; nothing depends on what one
//! machine happens to have, and a missing font is a clear error, not a blank chart.
//!
//! ```no_run
//! let run = record::Record::read(std::path::Path::new("runs/latest")).unwrap();
//! plots::plot(&[run], std::path::Path::new("run.png"), &plots::Options::default()).unwrap();
//! ```

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;
use record::{MinuteRow, Record, ServiceRow};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum PlotError {
    #[error(
        "no TrueType font found (looked for {0}); install one (Debian: apt-get install fonts-dejavu-core) or set AUTOTHROTTLE_FONT to a .ttf file"
    )]
    NoFont(String),
    #[error("{path}: not a usable TrueType font")]
    BadFont { path: PathBuf },
    #[error("nothing to plot: {0}")]
    Empty(String),
    #[error("{path}: cannot draw: {message}")]
    Draw { path: PathBuf, message: String },
    #[error(transparent)]
    Record(#[from] record::RecordError),
}

/// Chart options.
#[derive(Debug, Clone)]
pub struct Options {
    pub width: u32,
    pub height: u32,
    /// Stack one run's allocation by service (needs services.csv) instead of by group.
    pub per_service: bool,
    /// A title; defaults to the runs' scenario and trace.
    pub title: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            width: 1400,
            height: 1300,
            per_service: false,
            title: None,
        }
    }
}

const FONT_CANDIDATES: [&str; 8] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "/Library/Fonts/Arial.ttf",
];

/// The font file to draw text with: `AUTOTHROTTLE_FONT`, else the first usual system font.
pub fn find_font() -> Result<PathBuf, PlotError> {
    if let Some(p) = std::env::var_os("AUTOTHROTTLE_FONT") {
        return Ok(PathBuf::from(p));
    }
    FONT_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| PlotError::NoFont(FONT_CANDIDATES.join(", ")))
}

/// Registers the font with plotters once per process.
fn ensure_font() -> Result<(), PlotError> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let r = DONE.get_or_init(|| {
        let path = find_font().map_err(|e| e.to_string())?;
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        // plotters keeps fonts for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{}: not a usable TrueType font", path.display()))
    });
    r.clone().map_err(|m| PlotError::Draw {
        path: PathBuf::from("(font)"),
        message: m,
    })
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// A run's legend name; `with_source` prefixes `sim`/`live` (when a plot mixes both).
fn label(r: &Record, with_source: bool) -> String {
    let i = &r.info;
    let what = match i.tower.as_str() {
        "none" => format!("{} {}", i.scaler, i.targets),
        tower => format!("{} + {} tower", i.scaler, tower),
    };
    if with_source {
        format!("{}: {what}", i.source)
    } else {
        what
    }
}

/// Draws `runs` into a PNG at `out`.
pub fn plot(runs: &[Record], out: &Path, opts: &Options) -> Result<(), PlotError> {
    if runs.is_empty() {
        return Err(PlotError::Empty("no runs given".into()));
    }
    if runs.iter().all(|r| r.minutes.is_empty()) {
        return Err(PlotError::Empty(format!(
            "{} has no minutes (runs shorter than a minute have nothing per minute)",
            runs[0].dir.display()
        )));
    }
    ensure_font()?;
    let services = if runs.len() == 1 && opts.per_service {
        runs[0].services()?
    } else {
        None
    };
    draw(runs, services.as_deref(), out, opts).map_err(|message| PlotError::Draw {
        path: out.to_path_buf(),
        message,
    })
}

/// One line of a [`per_second`] chart: a label and the rows of `services.csv` it draws.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub rows: Vec<ServiceRow>,
}

/// Per service (a row of panels each), usage in cores and throttle ratio per second, one line
/// per series. Services come in the order they first appear in the first series.
pub fn per_second(series: &[Series], out: &Path, title: &str) -> Result<(), PlotError> {
    let first = series
        .first()
        .filter(|s| !s.rows.is_empty())
        .ok_or_else(|| PlotError::Empty("no per-second rows (services.csv)".into()))?;
    let mut services: Vec<&str> = Vec::new();
    for r in &first.rows {
        if !services.contains(&r.service.as_str()) {
            services.push(&r.service);
        }
    }
    ensure_font()?;
    draw_per_second(series, &services, out, title).map_err(|message| PlotError::Draw {
        path: out.to_path_buf(),
        message,
    })
}

fn draw_per_second(
    series: &[Series],
    services: &[&str],
    out: &Path,
    title: &str,
) -> Result<(), String> {
    // Panels stay readable up to a few dozen services; beyond, the image grows.
    let height = (220 * services.len() as u32).max(400) + 60;
    let root = BitMapBackend::new(out, (1400, height)).into_drawing_area();
    root.fill(&WHITE).map_err(s)?;
    let root = root.titled(title, ("sans-serif", 24)).map_err(s)?;
    let seconds = series
        .iter()
        .flat_map(|x| x.rows.iter().map(|r| r.t))
        .max()
        .unwrap_or(1) as f64;
    let rows = root.split_evenly((services.len(), 2));
    for (i, name) in services.iter().enumerate() {
        let pick = |x: &Series, f: fn(&ServiceRow) -> f64| -> Vec<(f64, f64)> {
            x.rows
                .iter()
                .filter(|r| r.service == *name)
                .map(|r| (r.t as f64, f(r)))
                .collect()
        };
        let usage_top = series
            .iter()
            .flat_map(|x| pick(x, |r| r.usage))
            .map(|p| p.1)
            .fold(0.1f64, f64::max)
            * 1.15;
        for (j, (what, top, f)) in [
            (
                "usage",
                usage_top,
                (|r: &ServiceRow| r.usage) as fn(&ServiceRow) -> f64,
            ),
            ("throttle ratio", 1.0, |r: &ServiceRow| r.throttle_ratio),
        ]
        .into_iter()
        .enumerate()
        {
            let mut chart = ChartBuilder::on(&rows[2 * i + j])
                .margin(8)
                .x_label_area_size(25)
                .y_label_area_size(50)
                .caption(format!("{name}: {what}"), ("sans-serif", 16))
                .build_cartesian_2d(0.0..seconds.max(1.0), 0.0..top)
                .map_err(s)?;
            chart
                .configure_mesh()
                .x_desc("second")
                .y_desc(if j == 0 { "cores" } else { "ratio" })
                .draw()
                .map_err(s)?;
            for (k, x) in series.iter().enumerate() {
                let label = (i == 0 && j == 0).then(|| x.label.clone());
                line(&mut chart, pick(x, f), PALETTE[k % PALETTE.len()], label)?;
            }
            if i == 0 && j == 0 {
                legend(&mut chart)?;
            }
        }
    }
    root.present().map_err(s)
}

/// Any drawing error, as text (plotters' error types differ per backend).
fn s(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A run's per-minute values, clipped at `top`, at the middle of each minute.
fn points(r: &Record, value: impl Fn(&MinuteRow) -> f64, top: f64) -> Vec<(f64, f64)> {
    r.minutes
        .iter()
        .map(|m| (m.minute as f64 + 0.5, value(m).min(top)))
        .collect()
}

/// One panel: a caption, minutes across, `0..top` up.
fn panel<'a, 'b>(
    area: &'a DrawingArea<BitMapBackend<'b>, Shift>,
    caption: String,
    minutes: f64,
    top: f64,
    unit: &str,
) -> Result<Chart<'a, 'b>, String> {
    let mut chart = ChartBuilder::on(area)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .caption(caption, ("sans-serif", 18))
        .build_cartesian_2d(0.0..minutes.max(1.0), 0.0..top)
        .map_err(s)?;
    chart
        .configure_mesh()
        .x_desc("minute")
        .y_desc(unit)
        .draw()
        .map_err(s)?;
    Ok(chart)
}

fn legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>) -> Result<(), String> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(s)
}

/// A line in `color` with its legend entry.
fn line(
    chart: &mut Chart<'_, '_>,
    pts: Vec<(f64, f64)>,
    color: RGBColor,
    label: Option<String>,
) -> Result<(), String> {
    let series = chart
        .draw_series(LineSeries::new(pts, color.stroke_width(2)))
        .map_err(s)?;
    if let Some(label) = label {
        series.label(label).legend(move |(x, y)| {
            PathElement::new(vec![(x, y), (x + 15, y)], color.stroke_width(2))
        });
    }
    Ok(())
}

fn max_of(runs: &[Record], value: impl Fn(&MinuteRow) -> f64, floor: f64) -> f64 {
    runs.iter()
        .flat_map(|r| r.minutes.iter().map(&value))
        .fold(floor, f64::max)
}

fn draw(
    runs: &[Record],
    services: Option<&[ServiceRow]>,
    out: &Path,
    opts: &Options,
) -> Result<(), String> {
    let mixed = runs.iter().any(|r| r.info.source != runs[0].info.source);
    let root = BitMapBackend::new(out, (opts.width, opts.height)).into_drawing_area();
    root.fill(&WHITE).map_err(s)?;
    let title = opts.title.clone().unwrap_or_else(|| {
        let i = &runs[0].info;
        format!("{} on {} (x{})", i.scenario, i.trace, i.multiplier)
    });
    let root = root.titled(&title, ("sans-serif", 26)).map_err(s)?;
    let panels = root.split_evenly((4, 1));
    let minutes = runs.iter().map(|r| r.minutes.len()).max().unwrap_or(1) as f64;
    let color = |i: usize| PALETTE[i % PALETTE.len()];

    // 1. Allocation. The ramp's first minutes hold the initial limits (32 cores each), which
    // would flatten everything else: the axis is fitted to the minutes after the ramp and
    // anything above is clipped.
    let skip = runs[0].info.ramp_s.div_ceil(60);
    let peak = |r: &Record| -> f64 {
        let used = |m: &MinuteRow| m.allocation.max(m.usage);
        let after = r.minutes.iter().skip(skip).map(used).fold(0.0, f64::max);
        if r.minutes.len() > skip {
            after
        } else {
            r.minutes.iter().map(used).fold(0.0, f64::max)
        }
    };
    let top = runs.iter().map(peak).fold(1.0f64, f64::max) * 1.15;
    let mut chart = panel(
        &panels[0],
        format!("allocation (cores; clipped at {top:.1})"),
        minutes,
        top,
        "cores",
    )?;
    if let [r] = runs {
        match services {
            Some(rows) => stack_services(&mut chart, rows, top)?,
            None => {
                for (value, fill, name) in [
                    (
                        Box::new(|m: &MinuteRow| m.allocation) as Box<dyn Fn(&MinuteRow) -> f64>,
                        PALETTE[1].mix(0.35),
                        "group 2 (rest)",
                    ),
                    (
                        Box::new(|m: &MinuteRow| m.allocation_group1),
                        PALETTE[0].mix(0.5),
                        "group 1 (CPU-heavy)",
                    ),
                ] {
                    chart
                        .draw_series(AreaSeries::new(points(r, value, top), 0.0, fill))
                        .map_err(s)?
                        .label(name)
                        .legend(move |(x, y)| {
                            Rectangle::new([(x, y - 5), (x + 15, y + 5)], fill.filled())
                        });
                }
            }
        }
        line(
            &mut chart,
            points(r, |m| m.usage, top),
            BLACK,
            Some("CPU used".into()),
        )?;
    } else {
        for (i, r) in runs.iter().enumerate() {
            let name = format!(
                "{} (mean {:.1})",
                label(r, mixed),
                r.info.summary.allocation
            );
            line(
                &mut chart,
                points(r, |m| m.allocation, top),
                color(i),
                Some(name),
            )?;
        }
    }
    legend(&mut chart)?;

    // 2. RPS.
    let top = max_of(runs, |m| m.rps, 1.0) * 1.1;
    let mut chart = panel(
        &panels[1],
        "requests per second".into(),
        minutes,
        top,
        "RPS",
    )?;
    for (i, r) in runs.iter().enumerate() {
        line(&mut chart, points(r, |m| m.rps, top), color(i), None)?;
    }

    // 3. P99 against the SLO; very bad minutes are clipped at 4x the SLO to keep it readable.
    let slo = runs[0].info.slo_ms;
    let top = max_of(runs, |m| m.p99_ms, 0.0).clamp(slo * 1.3, slo * 4.0);
    let caption = format!("P99 latency per minute (ms; SLO {slo} ms, clipped at {top:.0})");
    let mut chart = panel(&panels[2], caption, minutes, top, "ms")?;
    line(
        &mut chart,
        vec![(0.0, slo), (minutes, slo)],
        BLACK,
        Some("SLO".into()),
    )?;
    for (i, r) in runs.iter().enumerate() {
        let name = format!("{} (run P99 {:.1})", label(r, mixed), r.info.summary.p99_ms);
        line(
            &mut chart,
            points(r, |m| m.p99_ms, top),
            color(i),
            Some(name),
        )?;
    }
    legend(&mut chart)?;

    // 4. Targets.
    let top = max_of(runs, |m| m.target1.max(m.target2), 0.1) * 1.15;
    let caption = "targets (group 1 solid, group 2 dashed)".to_string();
    let mut chart = panel(&panels[3], caption, minutes, top, "target")?;
    for (i, r) in runs.iter().enumerate() {
        line(&mut chart, points(r, |m| m.target1, top), color(i), None)?;
        chart
            .draw_series(DashedLineSeries::new(
                points(r, |m| m.target2, top),
                6,
                4,
                color(i).stroke_width(2),
            ))
            .map_err(s)?;
    }
    root.present().map_err(s)
}

type Chart<'a, 'b> = ChartContext<
    'a,
    BitMapBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// Stacks per-service allocation (per-minute means of the per-second limits): the eight
/// largest services and "other".
fn stack_services(chart: &mut Chart<'_, '_>, rows: &[ServiceRow], top: f64) -> Result<(), String> {
    use std::collections::BTreeMap;
    let mut per: BTreeMap<&str, BTreeMap<u32, (f64, u32)>> = BTreeMap::new();
    for r in rows {
        let minute = r.t.saturating_sub(1) / 60;
        let e = per
            .entry(&r.service)
            .or_default()
            .entry(minute)
            .or_insert((0.0, 0));
        e.0 += r.limit;
        e.1 += 1;
    }
    let mean = |m: &BTreeMap<u32, (f64, u32)>| m.values().map(|(s, n)| s / *n as f64).sum::<f64>();
    let mut names: Vec<&str> = per.keys().copied().collect();
    names.sort_by(|a, b| mean(&per[b]).total_cmp(&mean(&per[a])).then(a.cmp(b)));
    let minutes = per
        .values()
        .flat_map(|m| m.keys().copied())
        .max()
        .unwrap_or(0)
        + 1;
    let value =
        |name: &str, minute: u32| per[name].get(&minute).map_or(0.0, |(s, n)| s / *n as f64);
    let shown = names.len().min(8);
    let mut layers: Vec<(String, Vec<f64>)> = names[..shown]
        .iter()
        .map(|n| (n.to_string(), (0..minutes).map(|m| value(n, m)).collect()))
        .collect();
    if names.len() > shown {
        let other = (0..minutes)
            .map(|m| names[shown..].iter().map(|n| value(n, m)).sum())
            .collect();
        layers.push(("other".into(), other));
    }
    // Draw from the top of the stack down so each area covers the ones below it.
    let mut cumulative = vec![0.0; minutes as usize];
    let mut tops = Vec::new();
    for (name, vals) in &layers {
        for (c, v) in cumulative.iter_mut().zip(vals) {
            *c += v;
        }
        tops.push((name.clone(), cumulative.clone()));
    }
    for (i, (name, stack)) in tops.iter().enumerate().rev() {
        let color = Palette99::pick(i).mix(0.7);
        let pts: Vec<(f64, f64)> = stack
            .iter()
            .enumerate()
            .map(|(m, v)| (m as f64 + 0.5, v.min(top)))
            .collect();
        chart
            .draw_series(AreaSeries::new(pts, 0.0, color))
            .map_err(s)?
            .label(name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], color.filled()));
    }
    Ok(())
}
