//! Whole-file audio decoding (evaluation sets, noise recordings): any file
//! FFmpeg reads, to 16 kHz mono f32.

use std::path::Path;

use ffmpeg::media::Type as MediaType;
use ffmpeg::{codec, frame, Packet};
use ffmpeg_next as ffmpeg;

use super::resample::ToMono16k;
use super::MediaError;

/// All audio of the best audio stream of `path`, as 16 kHz mono samples.
pub fn decode_audio_file(path: &Path) -> Result<Vec<f32>, MediaError> {
    super::container::init_ffmpeg()?;
    let mut input = ffmpeg::format::input(path)
        .map_err(|e| MediaError::Undecodable(format!("{}: {e}", path.display())))?;
    let stream = input.streams().best(MediaType::Audio).ok_or_else(|| {
        MediaError::MissingStream(format!("{} has no audio stream", path.display()))
    })?;
    let index = stream.index();
    let mut decoder = codec::context::Context::from_parameters(stream.parameters())
        .and_then(|c| c.decoder().audio())
        .map_err(|e| MediaError::Undecodable(format!("{}: {e}", path.display())))?;
    let mut resampler = ToMono16k::default();
    let mut out = Vec::new();
    let mut decoded = frame::Audio::empty();
    loop {
        let mut packet = Packet::empty();
        match packet.read(&mut input) {
            Ok(()) => {}
            Err(ffmpeg::Error::Eof) => break,
            Err(e) => return Err(MediaError::Undecodable(format!("{}: {e}", path.display()))),
        }
        if packet.stream() != index {
            continue;
        }
        if decoder.send_packet(&packet).is_ok() {
            while decoder.receive_frame(&mut decoded).is_ok() {
                resampler.push(&decoded, &mut out)?;
            }
        }
    }
    let _ = decoder.send_eof();
    while decoder.receive_frame(&mut decoded).is_ok() {
        resampler.push(&decoded, &mut out)?;
    }
    resampler.flush(&mut out);
    Ok(out)
}
