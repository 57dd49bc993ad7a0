//! A small WER-vs-SNR line plot written as PNG, with a built-in 5x7 bitmap
//! font so it needs no font files: axes, grid, one point per condition,
//! tick labels in dB and percent.

use std::path::Path;

const W: usize = 640;
const H: usize = 420;
const LEFT: usize = 70;
const RIGHT: usize = 30;
const TOP: usize = 40;
const BOTTOM: usize = 60;

/// 5x7 glyphs, one byte per row (low 5 bits, MSB on the left).
fn glyph(c: char) -> [u8; 7] {
    match c {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        _ => [0; 7],
    }
}

struct Canvas {
    px: Vec<u8>,
}

impl Canvas {
    fn set(&mut self, x: i64, y: i64, rgb: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < W && (y as usize) < H {
            let i = (y as usize * W + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&rgb);
        }
    }

    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), rgb: [u8; 3], thick: i64) {
        let steps = (x1 - x0).abs().max((y1 - y0).abs()).max(1);
        for s in 0..=steps {
            let x = x0 + (x1 - x0) * s / steps;
            let y = y0 + (y1 - y0) * s / steps;
            for dx in -(thick / 2)..=(thick / 2) {
                for dy in -(thick / 2)..=(thick / 2) {
                    self.set(x + dx, y + dy, rgb);
                }
            }
        }
    }

    /// Text at (x, y) top-left, scaled 2x.
    fn text(&mut self, x: i64, y: i64, s: &str, rgb: [u8; 3]) {
        for (k, c) in s.chars().enumerate() {
            let g = glyph(c.to_ascii_uppercase());
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                            self.set(
                                x + k as i64 * 12 + col * 2 + dx,
                                y + row as i64 * 2 + dy,
                                rgb,
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Plots WER (%) against conditions, in the given order (e.g. 5, 2, 0, -2,
/// -5 dB, then clean), and writes a PNG to `path`.
pub fn wer_vs_snr(points: &[(String, f64)], path: &Path) -> std::io::Result<()> {
    let mut c = Canvas {
        px: vec![255; W * H * 3],
    };
    let (plot_w, plot_h) = ((W - LEFT - RIGHT) as i64, (H - TOP - BOTTOM) as i64);
    let max = points.iter().map(|p| p.1).fold(10.0f64, f64::max);
    let top = (max / 10.0).ceil() * 10.0;
    let grey = [220, 220, 220];
    let black = [0, 0, 0];
    for k in 0..=5 {
        let y = TOP as i64 + plot_h - plot_h * k / 5;
        c.line((LEFT as i64, y), (LEFT as i64 + plot_w, y), grey, 1);
        let label = format!("{:.0}", top * k as f64 / 5.0);
        c.text(
            LEFT as i64 - 12 * label.len() as i64 - 8,
            y - 7,
            &label,
            black,
        );
    }
    c.line(
        (LEFT as i64, TOP as i64),
        (LEFT as i64, TOP as i64 + plot_h),
        black,
        2,
    );
    c.line(
        (LEFT as i64, TOP as i64 + plot_h),
        (LEFT as i64 + plot_w, TOP as i64 + plot_h),
        black,
        2,
    );
    c.text(8, 8, "WER %", black);
    c.text(W as i64 / 2 - 40, H as i64 - 24, "SNR DB", black);
    let n = points.len().max(1) as i64;
    let xy = |i: usize, v: f64| {
        let x = LEFT as i64 + plot_w * (2 * i as i64 + 1) / (2 * n);
        let y = TOP as i64 + plot_h - (plot_h as f64 * (v / top)).round() as i64;
        (x, y)
    };
    let blue = [31, 119, 180];
    for (i, w) in points.windows(2).enumerate() {
        c.line(xy(i, w[0].1), xy(i + 1, w[1].1), blue, 3);
    }
    for (i, (label, v)) in points.iter().enumerate() {
        let (x, y) = xy(i, *v);
        for dx in -4..=4 {
            for dy in -4..=4 {
                c.set(x + dx, y + dy, blue);
            }
        }
        let l = label.to_uppercase();
        c.text(x - 6 * l.len() as i64, TOP as i64 + plot_h + 10, &l, black);
        let value = format!("{v:.1}");
        c.text(x - 6 * value.len() as i64, y - 22, &value, blue);
    }
    let file = std::fs::File::create(path)?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), W as u32, H as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(std::io::Error::other)?;
    writer
        .write_image_data(&c.px)
        .map_err(std::io::Error::other)?;
    Ok(())
}
