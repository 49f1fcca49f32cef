//! Figures, each as SVG and PNG, sized and labelled for a paper: axis labels with units, a
//! legend, log scales where values span decades.
//!
//! - `pareto.{svg,png}`: tokens/s against peak DRAM, one colour per policy, each policy's front
//!   joined by a line.
//! - `ms_per_token.{svg,png}`: per point, compute and stall stacked (their sum is the token's
//!   time), with the flash-busy time as a marker.
//! - `timeline.{svg,png}`: the last token of point 0, layer by layer: every flash read on the
//!   lanes of the I/O queue, and the ops on the compute lane, showing what overlaps.
//! - `device-NAME.{svg,png}`: the flash model's latency and throughput against request size at
//!   queue depths 1, 4, 8 and 32, and at depth 8 for reads in file order and reads 8 and 32
//!   KiB apart where the model prices them differently.

use crate::executor::Activity;
use crate::experiment::Experiment;
use crate::pareto::{front, throughput_and_dram, Standing, Table};
use crate::runner::{prepare, Cache};
use anyhow::{anyhow, Result};
use plotters::coord::combinators::{LogCoord, WithKeyPoints};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

const SIZE: (u32, u32) = (900, 600);

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plot: {e:?}")
}

/// Registers the bundled font (DejaVu Sans) once, so PNGs need no system fonts.
fn fonts() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            include_bytes!("../assets/DejaVuSans.ttf"),
        );
    });
}

/// Draws `f` into `base.svg` and `base.png`.
fn both(
    base: &Path,
    draw_svg: impl Fn(DrawingArea<SVGBackend, Shift>) -> Result<()>,
    draw_png: impl Fn(DrawingArea<BitMapBackend, Shift>) -> Result<()>,
) -> Result<Vec<PathBuf>> {
    fonts();
    let svg = base.with_extension("svg");
    let png = base.with_extension("png");
    {
        let root = SVGBackend::new(&svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        draw_svg(root.clone())?;
        root.present().map_err(err)?;
    }
    {
        let root = BitMapBackend::new(&png, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        draw_png(root.clone())?;
        root.present().map_err(err)?;
    }
    Ok(vec![svg, png])
}

macro_rules! both {
    ($base:expr, $draw:ident, $($arg:expr),*) => {
        both(
            $base,
            |root| $draw(root, $($arg),*),
            |root| $draw(root, $($arg),*),
        )
    };
}

/// The legend every figure draws: framed, on a translucent white box.
fn legend<'a, DB: DrawingBackend + 'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
    font_px: u32,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .label_font(("sans-serif", font_px))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)
}

/// A tick label: up to three significant digits, no float noise (0.7, 12, 0.035, 1500).
fn tick(v: &f64) -> String {
    if *v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let digits = (2 - v.abs().log10().floor() as i32).max(0) as usize;
    let s = format!("{v:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

type LogAxis = WithKeyPoints<LogCoord<f64>>;

/// A log axis over `lo..hi` with labelled ticks where a reader wants them: 1, 2 and 5 × 10^k
/// when the range holds at least four of them, otherwise every 1..9 × 10^k in it (plotters' own
/// choice labels every 1..10 × 10^k, whose top labels overlap, and nothing below the range's
/// first power of ten).
fn log_axis(lo: f64, hi: f64) -> LogAxis {
    let ticks = |digits: &[f64]| -> Vec<f64> {
        let (k0, k1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
        (k0..=k1)
            .flat_map(|k| digits.iter().map(move |d| d * 10f64.powi(k)))
            .filter(|v| (lo..=hi).contains(v))
            .collect()
    };
    let coarse = ticks(&[1.0, 2.0, 5.0]);
    let points = if coarse.len() >= 4 {
        coarse
    } else {
        ticks(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
    };
    (lo..hi).log_scale().with_key_points(points)
}

/// The mesh of a log-log chart: ticks without float noise, the axis descriptions, labels of
/// `label_size` and descriptions two points larger.
fn log_log_mesh<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<LogAxis, LogAxis>>,
    x_desc: &str,
    y_desc: &str,
    label_size: u32,
) -> Result<()> {
    chart
        .configure_mesh()
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .x_desc(x_desc)
        .y_desc(y_desc)
        .label_style(("sans-serif", label_size))
        .axis_desc_style(("sans-serif", label_size + 2))
        .draw()
        .map_err(err)
}

fn colour(i: usize) -> RGBColor {
    const P: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    P[i % P.len()]
}

/// (min, max) of `v` widened for a log axis.
fn log_range(v: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = v
        .filter(|x| *x > 0.0 && x.is_finite())
        .fold((f64::INFINITY, 0.0f64), |(a, b), x| (a.min(x), b.max(x)));
    if !lo.is_finite() {
        return (0.1, 10.0);
    }
    (lo / 1.5, hi * 1.5)
}

type XY = (f64, f64);
/// (request KiB, latency µs, throughput GB/s)
type CurvePoint = (f64, f64, f64);

struct ParetoData {
    /// Per policy: name, all (x, y), the front sorted by x.
    series: Vec<(String, Vec<XY>, Vec<XY>)>,
    title: String,
}

fn pareto_data(exp: &Experiment, t: &Table) -> Result<ParetoData> {
    let (pc, xc, yc) = (
        t.column("policy")
            .ok_or_else(|| anyhow!("no policy column"))?,
        t.column("dram_peak_bytes")
            .ok_or_else(|| anyhow!("no dram_peak_bytes"))?,
        t.column("tokens_per_s")
            .ok_or_else(|| anyhow!("no tokens_per_s"))?,
    );
    let mut policies: Vec<String> = t.rows.iter().map(|r| r[pc].clone()).collect();
    policies.sort();
    policies.dedup();
    let objectives = throughput_and_dram();
    let mut series = Vec::new();
    for p in policies {
        let sub = Table {
            header: t.header.clone(),
            rows: t.rows.iter().filter(|r| r[pc] == p).cloned().collect(),
        };
        let standing = front(&sub, &objectives, 0.0)?;
        let pts: Vec<(f64, f64, bool)> = (0..sub.rows.len())
            .filter_map(|r| {
                Some((
                    sub.num(r, xc)? / crate::device::GIB,
                    sub.num(r, yc)?,
                    standing[r] == Standing::OnFront,
                ))
            })
            .collect();
        let mut f: Vec<(f64, f64)> = pts.iter().filter(|p| p.2).map(|p| (p.0, p.1)).collect();
        f.sort_by(|a, b| a.0.total_cmp(&b.0));
        series.push((p, pts.iter().map(|p| (p.0, p.1)).collect(), f));
    }
    Ok(ParetoData {
        series,
        title: format!(
            "{}: throughput vs DRAM (Pareto front per policy)",
            exp.name()
        ),
    })
}

fn draw_pareto<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, d: &ParetoData) -> Result<()> {
    let all = || d.series.iter().flat_map(|s| s.1.iter());
    let (x0, x1) = log_range(all().map(|p| p.0));
    let (y0, y1) = log_range(all().map(|p| p.1));
    let mut chart = ChartBuilder::on(&root)
        .caption(&d.title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(log_axis(x0, x1), log_axis(y0, y1))
        .map_err(err)?;
    log_log_mesh(
        &mut chart,
        "peak DRAM (GiB, log scale)",
        "throughput (tokens/s, log scale)",
        14,
    )?;
    for (i, (name, pts, f)) in d.series.iter().enumerate() {
        let c = colour(i);
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))
            .map_err(err)?
            .label(name.as_str())
            .legend(move |(x, y)| Circle::new((x + 10, y), 4, c.filled()));
        chart
            .draw_series(LineSeries::new(f.iter().copied(), c.stroke_width(2)))
            .map_err(err)?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft, 14)?;
    Ok(())
}

struct Bars {
    /// (label, compute ms, stall ms, flash busy ms)
    rows: Vec<(String, f64, f64, f64)>,
    title: String,
}

fn bars_data(exp: &Experiment, t: &Table) -> Bars {
    let col = |n: &str| t.column(n);
    let (pc, polc, cc, sc, fc) = (
        col("point"),
        col("policy"),
        col("compute_ms_per_token"),
        col("stall_ms_per_token"),
        col("flash_io_ms_per_token"),
    );
    let rows = (0..t.rows.len())
        .filter_map(|r| {
            let label = format!(
                "{} {}",
                pc.map(|c| t.rows[r][c].clone()).unwrap_or_default(),
                polc.map(|c| t.rows[r][c].clone()).unwrap_or_default()
            );
            Some((label, t.num(r, cc?)?, t.num(r, sc?)?, t.num(r, fc?)?))
        })
        .collect();
    Bars {
        rows,
        title: format!("{}: time per token", exp.name()),
    }
}

fn draw_bars<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, d: &Bars) -> Result<()> {
    let n = d.rows.len().max(1);
    let ymax = d
        .rows
        .iter()
        .map(|r| (r.1 + r.2).max(r.3))
        .fold(0.0, f64::max)
        .max(1e-6)
        * 1.15;
    let labels: Vec<String> = d.rows.iter().map(|r| r.0.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(&d.title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(if n > 12 { 40 } else { 60 })
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..n as f64, 0.0..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n.min(24))
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 0.26 || n <= 24 {
                labels.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_desc("point, policy")
        .y_desc("ms per token")
        .label_style(("sans-serif", 12))
        .axis_desc_style(("sans-serif", 16))
        .draw()
        .map_err(err)?;
    let compute = RGBColor(31, 119, 180);
    let stall = RGBColor(214, 39, 40);
    let flash = RGBColor(44, 160, 44);
    // Stacked: compute from 0, stall on top of it.
    for (colour, label, on_top) in [
        (compute, "compute", false),
        (stall, "stall (waiting for flash)", true),
    ] {
        chart
            .draw_series(d.rows.iter().enumerate().map(|(i, r)| {
                let (lo, hi) = if on_top { (r.1, r.1 + r.2) } else { (0.0, r.1) };
                Rectangle::new(
                    [(i as f64 + 0.15, lo), (i as f64 + 0.85, hi)],
                    colour.filled(),
                )
            }))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], colour.filled()));
    }
    chart
        .draw_series(d.rows.iter().enumerate().map(|(i, r)| {
            PathElement::new(
                vec![(i as f64 + 0.05, r.3), (i as f64 + 0.95, r.3)],
                flash.stroke_width(3),
            )
        }))
        .map_err(err)?
        .label("flash busy (overlaps compute)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], flash.stroke_width(3)));
    legend(&mut chart, SeriesLabelPosition::UpperRight, 14)?;
    Ok(())
}

struct Timeline {
    /// (lane, start ms, end ms, layer or read)
    reads: Vec<(usize, f64, f64)>,
    ops: Vec<(f64, f64, u32)>,
    lanes: usize,
    title: String,
}

fn timeline_data(exp: &Experiment) -> Result<Option<Timeline>> {
    let mut cache = Cache::default();
    let point = &exp.points[0];
    let mut p = match prepare(exp, point, &mut cache) {
        Ok(p) => p,
        Err(_) => return Ok(None),
    };
    let (stats, act) = p.simulate(true)?;
    let Some(last) = stats.tokens.len().checked_sub(1) else {
        return Ok(None);
    };
    let t0 = stats.tokens[last].start;
    let ms = |x: crate::Ps| (x.0.saturating_sub(t0.0)) as f64 / 1e9;
    // Reads on lanes: the first lane free when each read is issued.
    let mut lane_free: Vec<f64> = Vec::new();
    let mut reads = Vec::new();
    let mut ops = Vec::new();
    let mut evs: Vec<&Activity> = act
        .iter()
        .filter(|a| match a {
            Activity::Read { token, .. } | Activity::Op { token, .. } => *token == last as u32,
        })
        .collect();
    evs.sort_by_key(|a| match a {
        Activity::Read { issued, .. } => issued.0,
        Activity::Op { start, .. } => start.0,
    });
    for a in evs {
        match *a {
            Activity::Read { issued, done, .. } => {
                let (s, e) = (ms(issued), ms(done));
                let lane = match lane_free.iter().position(|&f| f <= s) {
                    Some(l) => l,
                    None => {
                        lane_free.push(0.0);
                        lane_free.len() - 1
                    }
                };
                lane_free[lane] = e;
                reads.push((lane, s, e));
            }
            Activity::Op {
                op, start, done, ..
            } => ops.push((ms(start), ms(done), op)),
        }
    }
    Ok(Some(Timeline {
        lanes: lane_free.len().max(1),
        reads,
        ops,
        title: format!(
            "{} point 0 ({}): token {}, flash queue and compute",
            exp.name(),
            point.config.policy,
            last
        ),
    }))
}

fn draw_timeline<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, d: &Timeline) -> Result<()> {
    let end = d
        .reads
        .iter()
        .map(|r| r.2)
        .chain(d.ops.iter().map(|o| o.1))
        .fold(0.0, f64::max)
        .max(1e-6);
    // The compute lane gets a third of the height of the flash slots (at least two slots' worth).
    let band = (d.lanes as f64 / 3.0).max(2.0);
    let rows = d.lanes as f64 + band + 0.3;
    let mut chart = ChartBuilder::on(&root)
        .caption(&d.title, ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(90)
        .build_cartesian_2d(0.0..end * 1.02, 0.0..rows)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .y_desc(format!(
            "flash: {} queue slots (below)  |  compute (top)",
            d.lanes
        ))
        .x_desc("time within the token (ms)")
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 16))
        .draw()
        .map_err(err)?;
    let flash = RGBColor(44, 160, 44);
    chart
        .draw_series(d.reads.iter().map(|&(lane, s, e)| {
            Rectangle::new(
                [
                    (s, lane as f64 + 0.1),
                    (e.max(s + end * 1e-4), lane as f64 + 0.9),
                ],
                flash.mix(0.7).filled(),
            )
        }))
        .map_err(err)?
        .label("flash read")
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], flash.filled()));
    let y = d.lanes as f64 + 0.3;
    chart
        .draw_series(d.ops.iter().map(|&(s, e, op)| {
            let c = if op % 2 == 0 {
                RGBColor(31, 119, 180)
            } else {
                RGBColor(255, 127, 14)
            };
            Rectangle::new([(s, y), (e.max(s + end * 1e-4), y + band)], c.filled())
        }))
        .map_err(err)?
        .label("op (alternate colours)")
        .legend(|(x, y)| {
            Rectangle::new(
                [(x, y - 5), (x + 14, y + 5)],
                RGBColor(31, 119, 180).filled(),
            )
        });
    legend(&mut chart, SeriesLabelPosition::UpperRight, 13)?;
    Ok(())
}

struct Curve {
    label: String,
    /// Index into the palette.
    colour: usize,
    /// Dash length in pixels (0: a solid line).
    dash: u32,
    /// (request KiB, latency µs, throughput GB/s) by request size.
    pts: Vec<CurvePoint>,
}

struct Curves {
    series: Vec<Curve>,
    title: String,
}

/// Latency and throughput of a device's flash model against request size: random reads at
/// queue depths 1, 4, 8 and 32 (solid), and at depth 8 reads in file order and reads 8 and 32
/// KiB past the one before (dashed), where the model prices them differently from random ones
/// (the measured model's sequential and near figures).
fn curves_data(device: &crate::device::Device) -> Curves {
    use crate::device::{stream_bytes_per_s, APART_BYTES};
    let sizes: Vec<u64> = (0..=10).map(|i| 4096u64 << i).collect();
    let curve = |qd: u32, apart: u64| -> Vec<CurvePoint> {
        sizes
            .iter()
            .map(|&b| {
                let tput = stream_bytes_per_s(device.flash.as_ref(), qd, b, apart);
                // Little's law: latency = depth × size / throughput.
                let lat_us = qd as f64 * b as f64 / tput * 1e6;
                (b as f64 / 1024.0, lat_us, tput / 1e9)
            })
            .collect()
    };
    let mut series: Vec<Curve> = [1u32, 4, 8, 32]
        .iter()
        .enumerate()
        .map(|(i, &qd)| Curve {
            label: format!("QD {qd}"),
            colour: i,
            dash: 0,
            pts: curve(qd, APART_BYTES),
        })
        .collect();
    let random8 = series[2].pts.clone();
    for (label, apart, dash) in [
        ("QD 8, in file order", 0, 8),
        ("QD 8, 8 KiB apart", 8 << 10, 5),
        ("QD 8, 32 KiB apart", 32 << 10, 2),
    ] {
        let pts = curve(8, apart);
        let differs = pts
            .iter()
            .zip(&random8)
            .any(|(p, r)| (p.2 / r.2 - 1.0).abs() > 0.005);
        if differs {
            series.push(Curve {
                label: label.to_string(),
                colour: 2,
                dash,
                pts,
            });
        }
    }
    Curves {
        series,
        title: format!("{}: flash model", device.name),
    }
}

fn draw_curves<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, d: &Curves) -> Result<()> {
    let (left, right) = root.split_horizontally(SIZE.0 / 2);
    for (area, is_lat) in [(left, true), (right, false)] {
        let pick = |p: &(f64, f64, f64)| if is_lat { p.1 } else { p.2 };
        let all = || d.series.iter().flat_map(|s| s.pts.iter());
        let (x0, x1) = log_range(all().map(|p| p.0));
        let (y0, y1) = log_range(all().map(pick));
        let mut chart = ChartBuilder::on(&area)
            .caption(
                format!(
                    "{}: {}",
                    d.title,
                    if is_lat { "latency" } else { "throughput" }
                ),
                ("sans-serif", 15),
            )
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(log_axis(x0, x1), log_axis(y0, y1))
            .map_err(err)?;
        let y_desc = if is_lat {
            "latency per request (µs)"
        } else {
            "throughput (GB/s)"
        };
        log_log_mesh(&mut chart, "request size (KiB)", y_desc, 12)?;
        for s in &d.series {
            let c = colour(s.colour);
            let pts = s.pts.iter().map(|p| (p.0, pick(p)));
            let drawn = if s.dash == 0 {
                chart.draw_series(LineSeries::new(pts, c.stroke_width(2)))
            } else {
                chart.draw_series(DashedLineSeries::new(
                    pts,
                    s.dash,
                    s.dash,
                    c.stroke_width(2),
                ))
            };
            // Two strokes, touching for a solid line, apart for a dashed one.
            let a = if s.dash == 0 { 7 } else { s.dash.min(5) as i32 };
            drawn
                .map_err(err)?
                .label(s.label.clone())
                .legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(0, 0), (a, 0)], c.stroke_width(2))
                        + PathElement::new(vec![(14 - a, 0), (14, 0)], c.stroke_width(2))
                });
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft, 12)?;
    }
    Ok(())
}

/// Simulated against measured mean ms per token, one marker per point and device (filled: as
/// probed before each run, where the table has probes; hollow: the calibrated device file),
/// policies coloured, with the line of perfect agreement and ±10% bands.
pub fn draw_validation(rows: &[crate::validate::Row], base: &Path) -> Result<Vec<PathBuf>> {
    let probed = rows.iter().any(|r| r.device == "probed");
    let pts: Vec<ValidationPoint> = rows
        .iter()
        .filter(|r| r.metric == "ms_per_token" && r.stat == "mean")
        .map(|r| ValidationPoint {
            policy: r.policy.clone(),
            measured_ms: r.measured_ms,
            simulated_ms: r.simulated_ms,
            measured_ci95_ms: r.measured_ci95_ms.unwrap_or(0.0),
            filled: !probed || r.device == "probed",
        })
        .collect();
    both!(base, draw_validation_on, &pts)
}

/// One point of the validation figure: its mean ms per token, with the measured mean's 95%
/// interval drawn as a horizontal bar.
struct ValidationPoint {
    policy: String,
    measured_ms: f64,
    simulated_ms: f64,
    measured_ci95_ms: f64,
    /// Probed (filled) or the calibrated device file (hollow), where both were simulated.
    filled: bool,
}

fn draw_validation_on<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    pts: &[ValidationPoint],
) -> Result<()> {
    let (lo, hi) = log_range(pts.iter().flat_map(|p| {
        [
            p.simulated_ms,
            p.measured_ms + p.measured_ci95_ms,
            (p.measured_ms - p.measured_ci95_ms).max(p.measured_ms / 2.0),
        ]
    }));
    let mut chart = ChartBuilder::on(&root)
        .caption("simulated vs measured time per token", ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(log_axis(lo, hi), log_axis(lo, hi))
        .map_err(err)?;
    log_log_mesh(
        &mut chart,
        "measured (ms per token, log scale)",
        "simulated (ms per token, log scale)",
        12,
    )?;
    let grey = RGBColor(160, 160, 160).stroke_width(1);
    for (k, style, label) in [
        (1.0, BLACK.stroke_width(1), Some("simulated = measured")),
        (1.1, grey, Some("±10%")),
        (0.9, grey, None),
    ] {
        let series = chart
            .draw_series(LineSeries::new([(lo, lo * k), (hi, hi * k)], style))
            .map_err(err)?;
        if let Some(label) = label {
            series
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], style));
        }
    }
    let mut policies: Vec<&str> = pts.iter().map(|p| p.policy.as_str()).collect();
    policies.sort();
    policies.dedup();
    for (i, pol) in policies.iter().enumerate() {
        let c = colour(i);
        let mine = || pts.iter().filter(|p| p.policy == *pol);
        chart
            .draw_series(mine().filter(|p| p.measured_ci95_ms > 0.0).map(|p| {
                ErrorBar::new_horizontal(
                    p.simulated_ms,
                    (p.measured_ms - p.measured_ci95_ms).max(p.measured_ms / 2.0),
                    p.measured_ms,
                    p.measured_ms + p.measured_ci95_ms,
                    c.stroke_width(1),
                    6,
                )
            }))
            .map_err(err)?;
        chart
            .draw_series(mine().map(|p| {
                let style = if p.filled {
                    c.filled()
                } else {
                    c.stroke_width(2)
                };
                Circle::new((p.measured_ms, p.simulated_ms), 5, style)
            }))
            .map_err(err)?
            .label(pol.to_string())
            .legend(move |(x, y)| Circle::new((x + 7, y), 5, c.filled()));
    }
    if pts.iter().any(|p| p.measured_ci95_ms > 0.0) {
        let grey = RGBColor(90, 90, 90).stroke_width(1);
        chart
            .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())
            .map_err(err)?
            .label("95% interval of the measured mean")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], grey));
    }
    if pts.iter().any(|p| !p.filled) {
        for (filled, label) in [
            (true, "probed (each round, pooled)"),
            (false, "calibrated device file"),
        ] {
            let style = if filled {
                BLACK.filled()
            } else {
                BLACK.stroke_width(2)
            };
            chart
                .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())
                .map_err(err)?
                .label(label)
                .legend(move |(x, y)| Circle::new((x + 7, y), 5, style));
        }
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft, 12)?;
    Ok(())
}

/// Draws `device`'s flash latency and throughput against request size at `base`.{svg,png}.
pub fn draw_device(device: &crate::device::Device, base: &Path) -> Result<Vec<PathBuf>> {
    let c = curves_data(device);
    both!(base, draw_curves, &c)
}

/// Draws every figure of the results folder `dir` of `exp`; returns the files written.
pub fn draw_results(exp: &Experiment, dir: &Path) -> Result<Vec<PathBuf>> {
    let t = Table::read(&dir.join("results.csv"))?;
    let mut out = Vec::new();
    let p = pareto_data(exp, &t)?;
    out.extend(both!(&dir.join("pareto"), draw_pareto, &p)?);
    let b = bars_data(exp, &t);
    out.extend(both!(&dir.join("ms_per_token"), draw_bars, &b)?);
    if let Some(tl) = timeline_data(exp)? {
        out.extend(both!(&dir.join("timeline"), draw_timeline, &tl)?);
    }
    let mut seen = Vec::new();
    for point in &exp.points {
        if seen.contains(&point.config.device) {
            continue;
        }
        seen.push(point.config.device.clone());
        let path = crate::paths::resolve(&exp.src, "device", "devices", &point.config.device)?;
        let device = crate::device::Device::load(&path)?;
        let c = curves_data(&device);
        out.extend(both!(
            &dir.join(format!("device-{}", device.name)),
            draw_curves,
            &c
        )?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::curves_data;
    use crate::device::Device;

    #[test]
    fn device_curves_add_file_order_and_near_reads_only_where_the_model_prices_them() {
        let configs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/devices");
        // A parametric preset ignores where a read lies: random reads at four depths.
        let preset = Device::load(configs.join("ufs40-phone.toml")).unwrap();
        let labels: Vec<String> = curves_data(&preset)
            .series
            .into_iter()
            .map(|c| c.label)
            .collect();
        assert_eq!(labels, ["QD 1", "QD 4", "QD 8", "QD 32"]);
        // The calibrated device has sequential and near figures: three dashed curves more,
        // each different from the random one at QD 8 somewhere.
        let measured = Device::load(configs.join("vm-ext4-virtio.toml")).unwrap();
        let c = curves_data(&measured);
        assert_eq!(c.series.len(), 7);
        for s in &c.series[4..] {
            assert!(s.dash > 0 && s.label.starts_with("QD 8,"), "{}", s.label);
            assert!(s.pts.iter().zip(&c.series[2].pts).any(|(a, b)| a.2 != b.2));
        }
    }
}
