//! Video frames out at a fixed rate and size: frames are picked by their
//! presentation times (dropped or repeated to hit the rate), then scaled to
//! packed RGB24.

use ffmpeg::format::Pixel;
use ffmpeg::frame;
use ffmpeg::software::scaling;
use ffmpeg_next as ffmpeg;

use avlm_encoders::Frame;

use super::{MediaError, VideoSpec};

/// Picks frames for a constant output rate. Output times are computed as
/// origin + n / fps (never by repeated addition, which drifts).
#[derive(Debug, Clone)]
pub struct RateGate {
    period: f64,
    origin: Option<f64>,
    next: u64,
}

impl RateGate {
    pub fn new(fps: f64) -> Self {
        RateGate {
            period: 1.0 / fps,
            origin: None,
            next: 0,
        }
    }

    fn due(&self) -> f64 {
        self.origin.unwrap_or(0.0) + self.next as f64 * self.period
    }

    /// The output times (possibly none, possibly several) that a source frame
    /// shown from `pts` until `until` covers.
    pub fn take(&mut self, pts: f64, until: f64) -> Vec<f64> {
        if self.origin.is_none() || pts - self.due() > 1.0 {
            // First frame, or a jump forward (a gap in the source): the grid
            // restarts at this frame.
            self.origin = Some(pts);
            self.next = 0;
        }
        let end = until.max(pts + 1e-9) - 1e-9;
        let mut out = Vec::new();
        while self.due() < end {
            let due = self.due();
            if due + self.period * 0.5 >= pts {
                out.push(due);
            }
            self.next += 1;
        }
        out
    }
}

/// Scales decoded frames to the requested size.
pub struct VideoConverter {
    spec: VideoSpec,
    scaler: Option<((Pixel, u32, u32), scaling::Context)>,
    scaled: frame::Video,
}

impl VideoConverter {
    pub fn new(spec: VideoSpec) -> Self {
        VideoConverter {
            spec,
            scaler: None,
            scaled: frame::Video::empty(),
        }
    }

    /// The output size for a `width` x `height` source.
    pub fn output_size(&self, width: u32, height: u32) -> (u32, u32) {
        if !self.spec.keep_aspect {
            return (self.spec.width, self.spec.height);
        }
        let scale = (f64::from(self.spec.width) / f64::from(width.max(1)))
            .min(f64::from(self.spec.height) / f64::from(height.max(1)))
            .min(1.0);
        let side = |s: u32| ((f64::from(s) * scale).round() as u32).max(1);
        (side(width), side(height))
    }

    /// Converts one decoded frame to RGB24 at `pts_s`.
    pub fn convert(&mut self, input: &frame::Video, pts_s: f64) -> Result<Frame, MediaError> {
        let key = (input.format(), input.width(), input.height());
        let (out_w, out_h) = self.output_size(input.width(), input.height());
        if self.scaler.as_ref().map(|(k, _)| *k) != Some(key) {
            let ctx = scaling::Context::get(
                key.0,
                key.1,
                key.2,
                Pixel::RGB24,
                out_w,
                out_h,
                if self.spec.keep_aspect {
                    scaling::Flags::AREA
                } else {
                    scaling::Flags::BILINEAR
                },
            )
            .map_err(|e| {
                MediaError::Undecodable(format!(
                    "cannot scale {}x{} {:?} video: {e}",
                    key.1, key.2, key.0
                ))
            })?;
            self.scaler = Some((key, ctx));
            self.scaled = frame::Video::empty();
        }
        let Some((_, ctx)) = self.scaler.as_mut() else {
            return Err(MediaError::Internal("scaler missing".into()));
        };
        ctx.run(input, &mut self.scaled)
            .map_err(|e| MediaError::Undecodable(format!("video scaling failed: {e}")))?;
        let (w, h) = (out_w as usize, out_h as usize);
        let stride = self.scaled.stride(0);
        let src = self.scaled.data(0);
        let mut data = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            data.extend_from_slice(&src[y * stride..y * stride + w * 3]);
        }
        Ok(Frame {
            width: out_w,
            height: out_h,
            stride: w * 3,
            data,
            pts_s,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_aspect_ratio_fits_the_box_and_never_enlarges() {
        let conv = |w, h| {
            VideoConverter::new(VideoSpec {
                fps: 2.0,
                width: w,
                height: h,
                keep_aspect: true,
            })
        };
        assert_eq!(conv(520, 520).output_size(1920, 1080), (520, 293));
        assert_eq!(conv(520, 520).output_size(720, 1280), (293, 520));
        assert_eq!(conv(520, 520).output_size(320, 240), (320, 240));
        assert_eq!(conv(200, 100).output_size(400, 400), (100, 100));
    }

    #[test]
    fn halves_a_25fps_source_to_about_12_5() {
        let mut gate = RateGate::new(12.5);
        let mut n = 0;
        for i in 0..250 {
            let pts = i as f64 / 25.0;
            n += gate.take(pts, pts + 0.04).len();
        }
        assert!((124..=126).contains(&n), "{n}");
    }

    #[test]
    fn repeats_a_slow_source() {
        let mut gate = RateGate::new(10.0);
        let mut times = Vec::new();
        for i in 0..10 {
            let pts = i as f64 * 0.5;
            times.extend(gate.take(pts, pts + 0.5));
        }
        assert_eq!(times.len(), 50);
        for w in times.windows(2) {
            assert!((w[1] - w[0] - 0.1).abs() < 1e-9);
        }
    }
}
