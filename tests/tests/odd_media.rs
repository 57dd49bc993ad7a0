//! Media that is valid but unusual decodes fully: MPEG-TS with runs of bytes
//! that are no TS packets (padding, a dropout), audio with more channels
//! than FFmpeg has a default layout for, a recording with a header and no
//! media, audio starting after probing ends, a trailing tag the demuxer
//! trips on, several audio tracks, headerless G.711 named by its hint, a
//! still picture held for seconds, and video timestamps that jump.

mod common;

use avlm_proto as pb;
use common::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mpeg_ts_with_junk_runs_decodes_to_the_end() {
    let server = start_server(server_config()).await;
    let ts = read_media("speech.ts");
    // Trailing zero padding longer than one resync attempt of the demuxer.
    let mut padded = ts.clone();
    padded.extend(std::iter::repeat_n(0u8, 150_000));
    let run = stream_bytes(&server.url(), container_config(), padded, 16 * 1024)
        .await
        .expect("padded MPEG-TS ends OK");
    assert_matches_speech(&run.segments(), 0.1, "MPEG-TS + 150 KB of zeros");
    // A 2 MB dropout between two packets in the middle.
    let cut = ts.len() / 2 / 188 * 188;
    let mut dropout = ts[..cut].to_vec();
    dropout.extend(std::iter::repeat_n(0u8, 2_000_000));
    dropout.extend_from_slice(&ts[cut..]);
    let run = stream_bytes(&server.url(), container_config(), dropout, 16 * 1024)
        .await
        .expect("MPEG-TS with a dropout ends OK");
    assert_matches_speech(&run.segments(), 0.1, "MPEG-TS with 2 MB of zeros inside");
    server.shutdown().await.unwrap();
}

/// `speech.wav`'s 16-bit samples, from its `data` chunk.
fn wav_samples(wav: &[u8]) -> Vec<i16> {
    let mut at = 12;
    while at + 8 <= wav.len() {
        let size = u32::from_le_bytes(wav[at + 4..at + 8].try_into().unwrap()) as usize;
        if &wav[at..at + 4] == b"data" {
            let data = &wav[at + 8..(at + 8 + size).min(wav.len())];
            return data
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect();
        }
        at += 8 + size + (size & 1);
    }
    panic!("speech.wav has no data chunk");
}

/// A plain PCM WAV of `channels` channels, each carrying `samples`.
fn multichannel_wav(samples: &[i16], channels: u16, rate: u32) -> Vec<u8> {
    let data_len = (samples.len() * 2 * usize::from(channels)) as u32;
    let mut w = Vec::with_capacity(44 + data_len as usize);
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&(36 + data_len).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes()); // PCM, no channel mask
    w.extend_from_slice(&channels.to_le_bytes());
    w.extend_from_slice(&rate.to_le_bytes());
    w.extend_from_slice(&(rate * 2 * u32::from(channels)).to_le_bytes());
    w.extend_from_slice(&(2 * channels).to_le_bytes());
    w.extend_from_slice(&16u16.to_le_bytes());
    w.extend_from_slice(b"data");
    w.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        for _ in 0..channels {
            w.extend_from_slice(&s.to_le_bytes());
        }
    }
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_with_channels_ffmpeg_has_no_layout_for_is_mixed_down() {
    let server = start_server(server_config()).await;
    let samples = wav_samples(&read_media("speech.wav"));
    // 9, 12 and 17 channels have no default layout in FFmpeg (3-8, 16 and
    // 24 have one, and libswresample's own downmix).
    for channels in [9u16, 12, 17] {
        let wav = multichannel_wav(&samples, channels, 16_000);
        let run = stream_bytes(&server.url(), container_config(), wav, 64 * 1024)
            .await
            .unwrap_or_else(|e| panic!("{channels}-channel WAV: {e}"));
        assert_matches_speech(&run.segments(), 0.1, &format!("{channels}-channel WAV"));
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_with_its_header_and_no_media_ends_empty() {
    let server = start_server(server_config()).await;
    let url = server.url();
    let webm = read_media("speech.webm");
    // Everything before the first Cluster: EBML header, Info and Tracks.
    let cluster = webm
        .windows(4)
        .position(|w| w == [0x1F, 0x43, 0xB6, 0x75])
        .expect("speech.webm has a Cluster");
    let run = stream_bytes(&url, container_config(), webm[..cluster].to_vec(), 4096)
        .await
        .expect("a WebM header with no media ends OK, as an empty WAV does");
    assert!(run.segments().is_empty());
    let stats = run.last_stats().expect("final Stats");
    assert_eq!(stats.media_seconds_received, 0.0);
    assert_eq!(stats.bytes_received, cluster as u64);
    assert_eq!(stats.seconds_buffered, 0.0);
    // Cut inside the header: an error that says what the bytes looked like.
    let (_, status) = raw_call(
        &url,
        whole_stream(container_config(), &webm[..cluster / 2], 4096),
    )
    .await;
    let status = status.expect_err("a cut header is an error");
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(
        status.message().contains("it looks like Matroska"),
        "{}",
        status.message()
    );
    // Bytes that are no media at all say so.
    let noise: Vec<u8> = (0..20_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let (_, status) = raw_call(&url, whole_stream(container_config(), &noise, 4096)).await;
    let status = status.expect_err("noise is an error");
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(
        status
            .message()
            .contains("no container or stream FFmpeg recognises"),
        "{}",
        status.message()
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_track_picks_one_of_several_audio_streams() {
    let server = start_server(server_config()).await;
    let url = server.url();
    let bytes = read_media("two_tracks.mkv");
    let with_track = |track: Option<u32>| {
        container_input(pb::ContainerInput {
            audio_track: track,
            ..Default::default()
        })
    };
    // FFmpeg's pick is the default-flagged first track: silence.
    let run = stream_bytes(&url, with_track(None), bytes.clone(), 16 * 1024)
        .await
        .expect("the default track");
    assert!(run.segments().is_empty(), "{:?}", run.segments());
    let run = stream_bytes(&url, with_track(Some(1)), bytes.clone(), 16 * 1024)
        .await
        .expect("the second audio track");
    assert_matches_speech(&run.segments(), 0.1, "two_tracks.mkv, audio_track 1");
    let (_, status) = raw_call(&url, whole_stream(with_track(Some(2)), &bytes, 16 * 1024)).await;
    let status = status.expect_err("there is no third audio track");
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(
        status
            .message()
            .contains("audio_track 2 names no audio stream")
            && status.message().contains("has 2"),
        "{}",
        status.message()
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_that_starts_after_probing_ends_is_still_decoded() {
    // FFmpeg's probing (1 s) sees no audio packet, so the stream has no
    // parameters yet and FFmpeg's best-stream choice skips it.
    let server = start_server(server_config()).await;
    let run = stream_bytes(
        &server.url(),
        container_config(),
        read_media("late_audio.ts"),
        16 * 1024,
    )
    .await
    .expect("MPEG-TS with late audio");
    let shifted: Vec<Seg> = run
        .segments()
        .into_iter()
        .map(|s| Seg {
            start_s: s.start_s - 3.0,
            end_s: s.end_s - 3.0,
            ..s
        })
        .collect();
    assert_matches_speech(&shifted, 0.15, "late_audio.ts, 3 s later");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trailing_tag_the_demuxer_trips_on_ends_the_stream_normally() {
    let server = start_server(server_config()).await;
    let run = stream_bytes(
        &server.url(),
        container_config(),
        read_media("speech.wv"),
        16 * 1024,
    )
    .await
    .expect("WavPack with an APEv2 tag ends OK");
    assert_matches_speech(&run.segments(), 0.1, "speech.wv");
    let stats = run.last_stats().expect("final Stats");
    assert!(
        (stats.media_seconds_processed - manifest().duration_s).abs() < 0.05,
        "all the audio before the tag: {stats:?}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headerless_g711_is_read_at_8_khz_by_its_hint() {
    let server = start_server(server_config()).await;
    let url = server.url();
    let run = stream_bytes(&url, with_hint("mulaw"), read_media("speech.ul"), 4096)
        .await
        .expect("mu-law with its hint");
    assert_matches_speech(&run.segments(), 0.1, "speech.ul as mulaw");
    let stats = run.last_stats().unwrap();
    assert!(
        (stats.media_seconds_processed - manifest().duration_s).abs() < 0.05,
        "{stats:?}"
    );
    // Other headerless PCM has no rate to go by: refused, pointing to raw_pcm.
    let (_, status) = raw_call(
        &url,
        whole_stream(with_hint("s16le"), &read_media("speech.s16le"), 4096),
    )
    .await;
    let status = status.expect_err("an s16le hint");
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(
        status.message().contains("send it as raw_pcm"),
        "{}",
        status.message()
    );
    server.shutdown().await.unwrap();
}

/// `video_frames` of a SEGMENTS stream with video at `fps`.
async fn video_frames(url: &str, media: &str, fps: f32) -> u64 {
    let config = pb::StreamConfig {
        modalities: pb::Modalities::AudioVideo as i32,
        options: Some(pb::StreamOptions {
            video_fps: Some(fps),
            stats_interval_ms: Some(0),
            ..Default::default()
        }),
        ..container_config()
    };
    let run = stream_bytes(url, config, read_media(media), 16 * 1024)
        .await
        .unwrap_or_else(|e| panic!("{media}: {e}"));
    run.last_stats().expect("final stats").video_frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_still_picture_is_held_for_its_duration_and_a_timestamp_jump_is_a_gap() {
    let server = start_server(server_config()).await;
    // One MJPEG frame shown for 5 s: 10 frames at 2 fps, not one.
    let still = video_frames(&server.url(), "still.mkv", 2.0).await;
    assert!(
        still.abs_diff(10) <= 1,
        "{still} frames of a 5 s still picture"
    );
    // 3 s, a 100 s jump, 2 s: the frame before the jump is held 10 s at
    // most, so about (3 + 10 + 2) x 2 frames, not 210.
    let jump = video_frames(&server.url(), "video_jump.mkv", 2.0).await;
    assert!(
        (8..=32).contains(&jump),
        "{jump} frames across a 100 s jump"
    );
    server.shutdown().await.unwrap();
}
