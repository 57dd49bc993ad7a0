//! Conversion of decoded audio in any sample format, layout and rate to
//! 16 kHz mono f32 with libswresample.

use ffmpeg::software::resampling;
use ffmpeg::util::format::sample::{Sample, Type as SampleType};
use ffmpeg::{frame, ChannelLayout};
use ffmpeg_next as ffmpeg;

use super::{MediaError, AUDIO_RATE};

#[derive(Debug, Clone, Copy, PartialEq)]
struct InputKey {
    format: Sample,
    layout: u64,
    channels: u16,
    rate: u32,
}

/// Resampler that follows format changes of its input.
#[derive(Default)]
pub struct ToMono16k {
    ctx: Option<(InputKey, resampling::Context)>,
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
        let key = InputKey {
            format: input.format(),
            layout: layout.bits(),
            channels,
            rate: input.rate(),
        };
        if key.rate == 0 || matches!(key.format, Sample::None) {
            return Err(MediaError::Undecodable(
                "decoded audio has no sample rate or sample format".into(),
            ));
        }
        if self.ctx.as_ref().map(|(k, _)| *k) != Some(key) {
            // A format change mid-stream: drain the old converter first.
            self.flush(out)?;
            let ctx = resampling::Context::get(
                key.format,
                layout,
                key.rate,
                Sample::F32(SampleType::Packed),
                ChannelLayout::MONO,
                AUDIO_RATE,
            )
            .map_err(|e| MediaError::Internal(format!("cannot set up the resampler: {e}")))?;
            self.ctx = Some((key, ctx));
        }
        let Some((_, ctx)) = self.ctx.as_mut() else {
            return Ok(());
        };
        // SAFETY: `extended_data` holds one pointer per plane of `input`,
        // each valid for `samples` samples; `out` is sized for the converter's
        // maximum output before the call.
        unsafe {
            let swr = ctx.as_mut_ptr();
            let in_count = input.samples() as i32;
            let cap = ffmpeg::ffi::swr_get_out_samples(swr, in_count).max(0) as usize + 32;
            let start = out.len();
            out.resize(start + cap, 0.0);
            let mut out_ptr = out[start..].as_mut_ptr().cast::<u8>();
            let in_ptr = (*input.as_ptr()).extended_data as *mut *const u8;
            let n = ffmpeg::ffi::swr_convert(swr, &mut out_ptr, cap as i32, in_ptr, in_count);
            if n < 0 {
                out.truncate(start);
                return Err(MediaError::Internal(format!(
                    "resampling failed: {}",
                    ffmpeg::Error::from(n)
                )));
            }
            out.truncate(start + n as usize);
        }
        Ok(())
    }

    /// Drains the converter's delay line.
    pub fn flush(&mut self, out: &mut Vec<f32>) -> Result<(), MediaError> {
        let Some((_, ctx)) = self.ctx.as_mut() else {
            return Ok(());
        };
        // SAFETY: a null input drains; `out` is sized as in `push`.
        unsafe {
            let swr = ctx.as_mut_ptr();
            let cap = ffmpeg::ffi::swr_get_out_samples(swr, 0).max(0) as usize + 32;
            let start = out.len();
            out.resize(start + cap, 0.0);
            let mut out_ptr = out[start..].as_mut_ptr().cast::<u8>();
            let n =
                ffmpeg::ffi::swr_convert(swr, &mut out_ptr, cap as i32, std::ptr::null_mut(), 0);
            out.truncate(start + n.max(0) as usize);
        }
        Ok(())
    }
}
