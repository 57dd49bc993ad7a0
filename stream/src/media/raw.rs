//! Headerless PCM input: bytes straight from the pipe into the resampler,
//! no demuxer. Times come from the sample count.

use ffmpeg::util::format::sample::{Sample, Type as SampleType};
use ffmpeg::{frame, ChannelLayout};
use ffmpeg_next as ffmpeg;

use super::pipe::{Next, PipeReader};
use super::resample::ToMono16k;
use super::{MediaError, MediaItem, MediaSink, RawSampleFormat, AUDIO_RATE};
use avlm_encoders::Pcm;

/// Bytes pulled from the pipe per step (about 64 ms of 48 kHz stereo s16).
const READ_BYTES: usize = 12_288;

pub fn decode(
    format: RawSampleFormat,
    sample_rate: u32,
    channels: u16,
    mut reader: PipeReader,
    sink: MediaSink,
) -> Result<(), MediaError> {
    let cpu_start = super::thread_cpu_time();
    let frame_bytes = format.bytes() * usize::from(channels);
    let sample = match format {
        RawSampleFormat::S16le => Sample::I16(SampleType::Packed),
        RawSampleFormat::F32le => Sample::F32(SampleType::Packed),
    };
    let layout = ChannelLayout::default(i32::from(channels));
    let mut resampler = ToMono16k::default();
    let mut buf = vec![0u8; READ_BYTES];
    // Bytes of a sample frame split across reads.
    let mut carry: Vec<u8> = Vec::with_capacity(READ_BYTES + frame_bytes);
    let mut input_samples: u64 = 0;
    let mut emitted: u64 = 0;
    let mut pcm = Vec::new();

    let emit = |pcm: &mut Vec<f32>, emitted: &mut u64| -> Result<(), MediaError> {
        if pcm.is_empty() {
            return Ok(());
        }
        let mut samples = std::mem::take(pcm);
        super::sanitize(&mut samples);
        let start_s = *emitted as f64 / f64::from(AUDIO_RATE);
        *emitted += samples.len() as u64;
        sink.send(MediaItem::Audio(Pcm {
            samples,
            sample_rate: AUDIO_RATE,
            start_s,
        }))
    };

    loop {
        let next = reader.next(&mut buf).map_err(|_| MediaError::Aborted)?;
        match next {
            Next::Bytes(n) => {
                carry.extend_from_slice(&buf[..n]);
                let whole = carry.len() / frame_bytes * frame_bytes;
                if whole == 0 {
                    continue;
                }
                let count = whole / frame_bytes;
                let mut f = frame::Audio::new(sample, count, layout);
                f.set_rate(sample_rate);
                f.data_mut(0)[..whole].copy_from_slice(&carry[..whole]);
                carry.drain(..whole);
                input_samples += count as u64;
                sink.meter
                    .note_received(input_samples as f64 / f64::from(sample_rate));
                resampler.push(&f, &mut pcm)?;
                emit(&mut pcm, &mut emitted)?;
            }
            Next::Flush => {
                // libswresample drains only once per context: keep its few
                // samples of delay for the stream's real end.
                emit(&mut pcm, &mut emitted)?;
                sink.send(MediaItem::Flush)?;
            }
            Next::End => {
                resampler.flush(&mut pcm);
                emit(&mut pcm, &mut emitted)?;
                if !carry.is_empty() {
                    tracing::debug!(
                        bytes = carry.len(),
                        "raw PCM ended inside a sample frame; the partial frame is dropped"
                    );
                }
                sink.meter.note_cpu(cpu_start);
                return Ok(());
            }
        }
        sink.meter.note_cpu(cpu_start);
    }
}
