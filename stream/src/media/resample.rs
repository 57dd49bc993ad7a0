//! Conversion of decoded audio in any sample format, layout and rate to
//! 16 kHz mono f32 with libswresample.

use ffmpeg::software::resampling;
use ffmpeg::util::format::sample::{Sample, Type as SampleType};
use ffmpeg::{frame, ChannelLayout};
use ffmpeg_next as ffmpeg;

use super::{MediaError, AUDIO_RATE};

/// Sample rates converted. A header may claim any rate, and the cost of
/// converting grows with its distance from 16 kHz: libswresample's filter
/// for a WAV header claiming 855 MHz took 13 s and 970 MB to build from a
/// 15 KB stream (found by fuzzing), and from a rate of a few Hz every input
/// sample becomes thousands of output samples. Real audio lies well inside.
pub const INPUT_RATES: std::ops::RangeInclusive<u32> = 1_000..=768_000;

#[derive(Debug, Clone, Copy, PartialEq)]
struct InputKey {
    format: Sample,
    layout: u64,
    channels: u16,
    rate: u32,
    /// No layout FFmpeg can mix down (a channel count such as 9 or 12 with
    /// no default layout): libswresample keeps the channels, and they are
    /// averaged here.
    averaged: bool,
}

/// Resampler that follows format changes of its input.
#[derive(Default)]
pub struct ToMono16k {
    ctx: Option<(InputKey, resampling::Context)>,
}

/// A layout of `channels` positions for audio whose layout FFmpeg cannot
/// name: libswresample only needs it to count them, since it converts such
/// audio to the same layout (no mixing matrix).
fn anonymous_layout(channels: u16) -> ChannelLayout {
    let mask = if channels >= 64 {
        u64::MAX
    } else {
        (1u64 << channels) - 1
    };
    ChannelLayout::from_bits_retain(mask)
}

/// Averages interleaved frames of `channels` samples in `out[start..]` into
/// one sample each, in place.
fn average_channels(out: &mut Vec<f32>, start: usize, channels: usize) {
    let frames = (out.len() - start) / channels;
    for i in 0..frames {
        let from = start + i * channels;
        let sum: f32 = out[from..from + channels].iter().sum();
        out[start + i] = sum / channels as f32;
    }
    out.truncate(start + frames);
}

impl ToMono16k {
    /// Converts one frame; returns the samples produced so far (libswresample
    /// keeps a few samples of filter delay until [`ToMono16k::flush`]).
    pub fn push(&mut self, input: &frame::Audio, out: &mut Vec<f32>) -> Result<(), MediaError> {
        let channels = input.channels().max(1);
        let layout = {
            let l = input.channel_layout();
            if l.channels() == i32::from(channels) && !l.is_empty() {
                l
            } else {
                ChannelLayout::default(i32::from(channels))
            }
        };
        // FFmpeg has no default layout for this many channels.
        let averaged = layout.is_empty();
        let layout = if averaged {
            anonymous_layout(channels)
        } else {
            layout
        };
        let key = InputKey {
            format: input.format(),
            layout: layout.bits(),
            channels,
            rate: input.rate(),
            averaged,
        };
        if key.rate == 0 || matches!(key.format, Sample::None) {
            return Err(MediaError::Undecodable(
                "decoded audio has no sample rate or sample format".into(),
            ));
        }
        if !INPUT_RATES.contains(&key.rate) {
            return Err(MediaError::Undecodable(format!(
                "decoded audio at {} Hz: sample rates outside {}..={} Hz are refused",
                key.rate,
                INPUT_RATES.start(),
                INPUT_RATES.end()
            )));
        }
        if self.ctx.as_ref().map(|(k, _)| *k) != Some(key) {
            // A format change mid-stream: drain the old converter first.
            self.flush(out);
            let ctx = resampling::Context::get(
                key.format,
                layout,
                key.rate,
                Sample::F32(SampleType::Packed),
                if averaged {
                    layout
                } else {
                    ChannelLayout::MONO
                },
                AUDIO_RATE,
            )
            .map_err(|e| {
                MediaError::Undecodable(format!(
                    "cannot convert {channels}-channel {} audio at {} Hz to 16 kHz mono: {e}",
                    key.format.name(),
                    key.rate
                ))
            })?;
            self.ctx = Some((key, ctx));
        }
        self.convert(Some(input), out)
    }

    /// Drains the converter's delay line. A failed drain loses only the few
    /// samples of filter delay, so it is not an error.
    pub fn flush(&mut self, out: &mut Vec<f32>) {
        let _ = self.convert(None, out);
    }

    /// Runs the converter on `input` (`None` drains it) and appends its
    /// output, averaged to mono where libswresample kept the channels.
    fn convert(
        &mut self,
        input: Option<&frame::Audio>,
        out: &mut Vec<f32>,
    ) -> Result<(), MediaError> {
        let Some((key, ctx)) = self.ctx.as_mut() else {
            return Ok(());
        };
        let width = if key.averaged {
            usize::from(key.channels)
        } else {
            1
        };
        let start = out.len();
        // SAFETY: `extended_data` holds one pointer per plane of `input`, each
        // valid for `samples` samples (a null input with no samples drains);
        // `out` is sized for the converter's maximum output (frames of
        // `width` samples) before the call.
        unsafe {
            let swr = ctx.as_mut_ptr();
            let (in_ptr, in_count) = match input {
                Some(frame) => (
                    (*frame.as_ptr()).extended_data as *mut *const u8,
                    frame.samples() as i32,
                ),
                None => (std::ptr::null_mut(), 0),
            };
            let cap = ffmpeg::ffi::swr_get_out_samples(swr, in_count).max(0) as usize + 32;
            out.resize(start + cap * width, 0.0);
            let mut out_ptr = out[start..].as_mut_ptr().cast::<u8>();
            let n = ffmpeg::ffi::swr_convert(swr, &mut out_ptr, cap as i32, in_ptr, in_count);
            if n < 0 {
                out.truncate(start);
                return Err(MediaError::Internal(format!(
                    "resampling failed: {}",
                    ffmpeg::Error::from(n)
                )));
            }
            out.truncate(start + n as usize * width);
        }
        if width > 1 {
            average_channels(out, start, width);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn silence(rate: u32, samples: usize) -> frame::Audio {
        let mut f = frame::Audio::new(
            Sample::I16(SampleType::Packed),
            samples,
            ChannelLayout::MONO,
        );
        f.set_rate(rate);
        f.data_mut(0).fill(0);
        f
    }

    #[test]
    fn absurd_sample_rates_are_refused_before_a_converter_is_built() {
        crate::media::container::init_ffmpeg().unwrap();
        for rate in [855_719_552, 768_001, 999, 1] {
            let mut r = ToMono16k::default();
            let mut out = Vec::new();
            let refused = r.push(&silence(rate, 64), &mut out);
            assert!(
                matches!(&refused, Err(MediaError::Undecodable(m)) if m.contains(&format!("{rate} Hz"))),
                "{rate} Hz: {refused:?}"
            );
            assert!(out.is_empty());
        }
        for rate in [1_000, 8_000, 44_100, 768_000] {
            let mut r = ToMono16k::default();
            let mut out = Vec::new();
            r.push(&silence(rate, 4800), &mut out).unwrap();
            r.flush(&mut out);
            let expected = 4800.0 * 16_000.0 / f64::from(rate);
            assert!(
                (out.len() as f64 - expected).abs() < 64.0,
                "{rate} Hz: {}",
                out.len()
            );
        }
    }
}
