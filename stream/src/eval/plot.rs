//! The WER-vs-SNR plot of `avlm eval` as a PNG (plotters, text in a
//! TrueType font of the system): WER against SNR in dB as a line, the clean
//! condition as a separate marker beside the dB axis (it is no point on
//! it), each value labelled on the side its line leaves free, and a title
//! with the model, the clip count and the date.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;

pub const WIDTH: u32 = 640;
pub const HEIGHT: u32 = 420;
/// Width of the panel on the right that holds the clean marker.
const CLEAN_PANEL: u32 = 90;
const FONT: &str = "sans-serif";
const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(214, 96, 39);

/// Where fonts-dejavu-core (Debian, Ubuntu) and its peers put a sans font.
const FONT_FILES: [&str; 8] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// What the plot's title says.
#[derive(Debug, Clone)]
pub struct PlotTitle {
    /// The model's name (bundle or server model).
    pub model: String,
    pub clips: usize,
    /// YYYY-MM-DD.
    pub date: String,
}

/// Registers the first font found, once per process.
fn font() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let (path, bytes) = FONT_FILES
                .iter()
                .find_map(|p| std::fs::read(p).ok().map(|b| (p, b)))
                .ok_or_else(|| {
                    format!(
                        "no TrueType font for the plot (install fonts-dejavu-core; looked for {})",
                        FONT_FILES.join(", ")
                    )
                })?;
            // plotters keeps registered fonts for the process's life.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font(FONT, FontStyle::Normal, bytes)
                .map_err(|_| format!("{path}: not a font plotters can read"))
        })
        .clone()
}

/// Plots WER (%) per condition (`"clean"` or an SNR in dB) and writes a PNG.
pub fn wer_vs_snr(points: &[(String, f64)], title: &PlotTitle, path: &Path) -> std::io::Result<()> {
    let mut rgb = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    render(points, title, &mut rgb).map_err(std::io::Error::other)?;
    let file = std::fs::File::create(path)?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), WIDTH, HEIGHT);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(std::io::Error::other)?;
    writer.write_image_data(&rgb).map_err(std::io::Error::other)
}

/// The SNR points sorted by dB, and the clean WER if there is one.
fn split(points: &[(String, f64)]) -> (Vec<(f64, f64)>, Option<f64>) {
    let mut snr: Vec<(f64, f64)> = points
        .iter()
        .filter_map(|(label, wer)| label.parse::<f64>().ok().map(|db| (db, *wer)))
        .collect();
    snr.sort_by(|a, b| a.0.total_cmp(&b.0));
    let clean = points.iter().find(|(l, _)| l == "clean").map(|p| p.1);
    (snr, clean)
}

/// Which side of its point a value label goes: right (`true`) or left, and
/// up (`true`) or down (screen terms: y grows downwards). Always right, the
/// side of the next segment (the y axis is on the left), and up when that
/// segment falls, down when it rises; the last point has the right to itself.
fn label_side(prev: Option<(i32, i32)>, at: (i32, i32), next: Option<(i32, i32)>) -> (bool, bool) {
    match next {
        Some(n) => (true, n.1 >= at.1),
        None => (true, prev.is_none_or(|p| p.1 <= at.1)),
    }
}

/// A dB tick label: whole numbers bare, others to a tenth.
fn tick(x: f64) -> String {
    // Adding 0.0 turns -0 into 0.
    let r = (x * 10.0).round() / 10.0 + 0.0;
    if r == r.trunc() {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

/// Draws the plot into an RGB buffer of WIDTH x HEIGHT.
fn render(points: &[(String, f64)], title: &PlotTitle, rgb: &mut [u8]) -> Result<(), String> {
    font()?;
    let err = |e: DrawingAreaErrorKind<_>| e.to_string();
    let (snr, clean) = split(points);
    let max = points.iter().map(|p| p.1).fold(0.0f64, f64::max);
    let top = ((max * 1.15 / 10.0).ceil() * 10.0).max(10.0);
    let root = BitMapBackend::with_buffer(rgb, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let clips = if title.clips == 1 { "clip" } else { "clips" };
    let heading = format!(
        "WER vs SNR · {} · {} {clips} · {}",
        title.model, title.clips, title.date
    );
    let body = root.titled(&heading, (FONT, 17)).map_err(err)?;
    let (main, side) = match clean {
        Some(_) => body.split_horizontally(WIDTH - CLEAN_PANEL),
        None => body.split_horizontally(WIDTH),
    };
    let (lo, hi) = match (snr.first(), snr.last()) {
        (Some(a), Some(b)) => (a.0, b.0),
        _ => (-5.0, 5.0),
    };
    // Room on the right of the last point for its label.
    let pad = ((hi - lo) * 0.12).max(1.0);
    let mut chart = ChartBuilder::on(&main)
        .margin(12)
        .margin_right(4)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d((lo - pad)..(hi + pad), 0f64..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(225, 225, 225))
        .x_desc("SNR (dB)")
        .y_desc("WER (%)")
        .x_labels(9)
        .x_label_formatter(&|x| tick(*x))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(snr.iter().copied(), BLUE.stroke_width(2)))
        .map_err(err)?;
    chart
        .draw_series(snr.iter().map(|&p| Circle::new(p, 4, BLUE.filled())))
        .map_err(err)?;
    let px: Vec<(i32, i32)> = snr.iter().map(|p| chart.backend_coord(p)).collect();
    for (i, (&at, p)) in px.iter().zip(&snr).enumerate() {
        let prev = i.checked_sub(1).map(|j| px[j]);
        let (right, up) = label_side(prev, at, px.get(i + 1).copied());
        let text = format!("{:.1}%", p.1);
        let (x, anchor_h) = match right {
            true => (at.0 + 7, HPos::Left),
            false => (at.0 - 7, HPos::Right),
        };
        let (y, anchor_v) = match up {
            true => (at.1 - 6, VPos::Bottom),
            false => (at.1 + 6, VPos::Top),
        };
        let style = TextStyle::from((FONT, 13).into_font())
            .color(&BLUE)
            .pos(Pos::new(anchor_h, anchor_v));
        root.draw(&Text::new(text, (x, y), style)).map_err(err)?;
    }
    if let Some(wer) = clean {
        let mut panel = ChartBuilder::on(&side)
            .margin(12)
            .margin_left(0)
            .x_label_area_size(44)
            .y_label_area_size(0)
            .build_cartesian_2d(0f64..1f64, 0f64..top)
            .map_err(err)?;
        panel
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .light_line_style(WHITE)
            .bold_line_style(RGBColor(225, 225, 225))
            .draw()
            .map_err(err)?;
        panel
            .draw_series(std::iter::once(TriangleMarker::new(
                (0.5, wer),
                6,
                ORANGE.filled(),
            )))
            .map_err(err)?;
        let at = panel.backend_coord(&(0.5, wer));
        let below = panel.backend_coord(&(0.5, 0.0));
        let centred = |color: &'static RGBColor, v: VPos| {
            TextStyle::from((FONT, 13).into_font())
                .color(color)
                .pos(Pos::new(HPos::Center, v))
        };
        root.draw(&Text::new(
            format!("{wer:.1}%"),
            (at.0, at.1 - 9),
            centred(&ORANGE, VPos::Bottom),
        ))
        .map_err(err)?;
        root.draw(&Text::new(
            "clean",
            (below.0, below.1 + 8),
            centred(&BLACK, VPos::Top),
        ))
        .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(v: &[(&str, f64)]) -> Vec<(String, f64)> {
        v.iter().map(|(l, w)| (l.to_string(), *w)).collect()
    }

    #[test]
    fn ticks_read_as_decibels() {
        assert_eq!(tick(-0.6000000000000001), "-0.6");
        assert_eq!(tick(2.0), "2");
        assert_eq!(tick(-0.0), "0");
    }

    #[test]
    fn clean_is_kept_off_the_db_line() {
        let (snr, clean) = split(&points(&[
            ("5", 20.0),
            ("-5", 60.0),
            ("0", 35.0),
            ("clean", 12.0),
        ]));
        assert_eq!(snr, vec![(-5.0, 60.0), (0.0, 35.0), (5.0, 20.0)]);
        assert_eq!(clean, Some(12.0));
    }

    /// Whether the label box beside `at` on `side` crosses the segment from
    /// `at` to `other` (screen coordinates, label 40x14 px, offset 7/6 px).
    fn crosses(at: (i32, i32), side: (bool, bool), other: (i32, i32)) -> bool {
        let (x0, x1) = if side.0 {
            (at.0 + 7, at.0 + 47)
        } else {
            (at.0 - 47, at.0 - 7)
        };
        let (y0, y1) = if side.1 {
            (at.1 - 20, at.1 - 6)
        } else {
            (at.1 + 6, at.1 + 20)
        };
        (0..=100).any(|k| {
            let t = f64::from(k) / 100.0;
            let x = f64::from(at.0) + t * f64::from(other.0 - at.0);
            let y = f64::from(at.1) + t * f64::from(other.1 - at.1);
            x >= f64::from(x0) && x <= f64::from(x1) && y >= f64::from(y0) && y <= f64::from(y1)
        })
    }

    #[test]
    fn labels_sit_where_the_line_is_not() {
        // Screen coordinates (y down), 100 px apart: falling, rising, a peak, a valley.
        let curves: [&[(i32, i32)]; 4] = [
            &[(0, 50), (100, 120), (200, 200), (300, 300)],
            &[(0, 300), (100, 200), (200, 120), (300, 50)],
            &[(0, 300), (100, 100), (200, 300)],
            &[(0, 100), (100, 300), (200, 100)],
        ];
        for curve in curves {
            for (i, &at) in curve.iter().enumerate() {
                let prev = i.checked_sub(1).map(|j| curve[j]);
                let next = curve.get(i + 1).copied();
                let side = label_side(prev, at, next);
                for other in prev.into_iter().chain(next) {
                    assert!(
                        !crosses(at, side, other),
                        "{curve:?} point {i} side {side:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn renders_text_title_and_both_markers() {
        if font().is_err() {
            eprintln!("no system font: skipped");
            return;
        }
        let mut rgb = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
        let title = PlotTitle {
            model: "default".into(),
            clips: 3,
            date: "2025-01-02".into(),
        };
        render(
            &points(&[("5", 20.0), ("0", 35.0), ("clean", 12.0)]),
            &title,
            &mut rgb,
        )
        .unwrap();
        let px = |x: u32, y: u32| {
            let i = ((y * WIDTH + x) * 3) as usize;
            [rgb[i], rgb[i + 1], rgb[i + 2]]
        };
        // The title row has ink; the clean panel has the orange marker.
        assert!((0..WIDTH).any(|x| (5..25).any(|y| px(x, y) != [255, 255, 255])));
        let orange = |p: [u8; 3]| p[0] > 180 && p[1] < 140 && p[2] < 100;
        assert!((WIDTH - CLEAN_PANEL..WIDTH).any(|x| (0..HEIGHT).any(|y| orange(px(x, y)))));
        assert!(!(0..WIDTH - CLEAN_PANEL - 10).any(|x| (0..HEIGHT).any(|y| orange(px(x, y)))));
    }
}
