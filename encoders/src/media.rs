//! Plain media values passed between crates: decoded audio and video frames
//! with their media times.

/// Mono PCM samples at `sample_rate`, the first of which sits at `start_s`
/// seconds of media time.
#[derive(Debug, Clone, PartialEq)]
pub struct Pcm {
    pub samples: Vec<f32>,
    pub sample_rate: u32,
    pub start_s: f64,
}

impl Pcm {
    /// Media time just after the last sample.
    pub fn end_s(&self) -> f64 {
        self.start_s + self.samples.len() as f64 / f64::from(self.sample_rate)
    }
}

/// One packed RGB24 video frame; row `y` starts at `y * stride` in `data`.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub width: u32,
    pub height: u32,
    pub stride: usize,
    pub data: Vec<u8>,
    /// Presentation time in seconds of media time.
    pub pts_s: f64,
}

impl Frame {
    /// The RGB bytes of row `y` (without stride padding).
    pub fn row(&self, y: u32) -> &[u8] {
        let start = y as usize * self.stride;
        &self.data[start..start + self.width as usize * 3]
    }
}
