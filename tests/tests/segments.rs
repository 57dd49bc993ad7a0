//! Live speech segments over the real server: every container, every chunk
//! size, the same segments at the right times.

mod common;

use avlm_proto as pb;
use common::*;

/// AAC in MPEG-TS and fragmented MP4 carries no priming information, so its
/// audio plays 1024 samples (at 48 kHz) late: known times shift by that much.
const AAC_PRIMING_S: f64 = 1024.0 / 48_000.0;
const TOLERANCE_S: f64 = 0.1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_container_and_chunk_size_gives_identical_segments_at_the_silences() {
    let server = start_server(server_config()).await;
    let url = server.url();
    let cases: &[(&str, &[usize], f64)] = &[
        ("speech.webm", &[1, 7, 1000, 4096, 65536], 0.0),
        ("speech.frag.mp4", &[3, 1000, 4096, 65536], AAC_PRIMING_S),
        ("speech.ts", &[188, 1000, 4096, 65536], AAC_PRIMING_S),
        ("speech.fast.mp4", &[4096, 65536], 0.0),
        ("speech.wav", &[4096], 0.0),
        ("speech.ogg", &[513], 0.0),
        // MP3 encoders delay the audio by their decoder delay (529 samples)
        // plus a frame of padding the LAME header does not fully remove.
        ("speech.mp3", &[1000, 65536], 1152.0 / 16_000.0),
        ("speech.flac", &[333, 65536], 0.0),
    ];
    for (file, chunks, extra) in cases {
        let bytes = read_media(file);
        let mut first: Option<Vec<Seg>> = None;
        for &chunk in *chunks {
            let run = stream_bytes(&url, container_config(), bytes.clone(), chunk)
                .await
                .unwrap_or_else(|e| panic!("{file} in {chunk}-byte chunks: {e}"));
            let segs = run.segments();
            assert_matches_speech(&segs, TOLERANCE_S + extra, &format!("{file} / {chunk} B"));
            match &first {
                None => first = Some(segs),
                Some(f) => assert_eq!(f, &segs, "{file}: {chunk}-byte chunks changed the segments"),
            }
            let stats = run.last_stats().expect("final stats");
            assert_eq!(stats.bytes_received, bytes.len() as u64);
            assert!(
                (stats.media_seconds_processed - manifest().duration_s).abs() < 0.1,
                "{stats:?}"
            );
            assert_eq!(
                stats.seconds_buffered, 0.0,
                "{file}: the stream ended: {stats:?}"
            );
        }
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_in_order_starts_before_ends() {
    let server = start_server(server_config()).await;
    let run = stream_bytes(
        &server.url(),
        container_config(),
        read_media("speech.webm"),
        4096,
    )
    .await
    .unwrap();
    let mut open: Option<u64> = None;
    let mut last_time = 0.0;
    assert!(matches!(
        run.messages[0].msg,
        Some(pb::server_message::Msg::Ready(_))
    ));
    for m in &run.messages {
        if let Some(pb::server_message::Msg::Segment(s)) = &m.msg {
            if s.kind == pb::segment::Kind::SpeechStart as i32 {
                assert!(open.is_none(), "start while a segment is open");
                assert!(s.start_s >= last_time);
                open = Some(s.segment_id);
            } else {
                assert_eq!(open.take(), Some(s.segment_id), "end without its start");
                assert!(s.end_s > s.start_s);
                last_time = s.end_s;
            }
        }
    }
    assert!(open.is_none());
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_pcm_at_another_rate_is_resampled_and_timed() {
    let server = start_server(server_config()).await;
    // The 16 kHz s16le file, declared and sent as-is...
    let pcm16 = read_media("speech.s16le");
    let mut config = container_config();
    config.input = Some(pb::stream_config::Input::RawPcm(pb::RawPcmInput {
        sample_format: pb::SampleFormat::S16le as i32,
        sample_rate: 16_000,
        channels: 1,
    }));
    let run = stream_bytes(&server.url(), config.clone(), pcm16.clone(), 999)
        .await
        .unwrap();
    assert_matches_speech(&run.segments(), TOLERANCE_S, "s16le 16 kHz");

    // ...and as 48 kHz stereo f32 (each sample tripled, both channels equal).
    let mut f32_48k = Vec::with_capacity(pcm16.len() * 12);
    for s in pcm16.chunks_exact(2) {
        let v = f32::from(i16::from_le_bytes([s[0], s[1]])) / 32768.0;
        for _ in 0..3 {
            for _ in 0..2 {
                f32_48k.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    config.input = Some(pb::stream_config::Input::RawPcm(pb::RawPcmInput {
        sample_format: pb::SampleFormat::F32le as i32,
        sample_rate: 48_000,
        channels: 2,
    }));
    let run = stream_bytes(&server.url(), config, f32_48k, 7 * 1024 + 3)
        .await
        .unwrap();
    assert_matches_speech(&run.segments(), TOLERANCE_S, "f32le 48 kHz stereo");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_librivox_recording_gives_speech() {
    let server = start_server(server_config()).await;
    let run = stream_bytes(
        &server.url(),
        container_config(),
        read_media("librivox.webm"),
        4096,
    )
    .await
    .unwrap();
    let segs = run.segments();
    assert!(!segs.is_empty(), "no speech found in a LibriVox reading");
    let speech: f64 = segs.iter().map(|s| s.end_s - s.start_s).sum();
    // The clip is 7.1 s of continuous reading.
    assert!(speech > 5.0, "only {speech:.2} s of speech found: {segs:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_is_decoded_at_the_requested_rate() {
    let server = start_server(server_config()).await;
    let mut config = container_config();
    config.modalities = pb::Modalities::AudioVideo as i32;
    config.options.as_mut().unwrap().video_fps = Some(10.0);
    config.options.as_mut().unwrap().video_width = Some(64);
    config.options.as_mut().unwrap().video_height = Some(48);
    for file in ["speech.webm", "speech.frag.mp4", "speech.ts"] {
        let run = stream_bytes(&server.url(), config.clone(), read_media(file), 8192)
            .await
            .unwrap();
        let stats = run.last_stats().unwrap();
        let expected = manifest().duration_s * 10.0;
        assert!(
            (stats.video_frames as f64 - expected).abs() <= 2.0,
            "{file}: {} frames for {expected:.0} expected",
            stats.video_frames
        );
        assert_matches_speech(&run.segments(), TOLERANCE_S + AAC_PRIMING_S, file);
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_closes_the_open_segment_and_the_stream_goes_on() {
    let server = start_server(server_config()).await;
    let pcm = read_media("speech.s16le");
    let mut config = container_config();
    config.input = Some(pb::stream_config::Input::RawPcm(pb::RawPcmInput {
        sample_format: pb::SampleFormat::S16le as i32,
        sample_rate: 16_000,
        channels: 1,
    }));
    // Flush in the middle of the first utterance (2.0 s).
    let cut = 2 * 16_000 * 2;
    let mut messages = vec![config_msg(config)];
    messages.push(media_msg(&pcm[..cut], 0));
    messages.push(control_msg(pb::control::Action::Flush));
    messages.push(media_msg(&pcm[cut..], 1));
    messages.push(control_msg(pb::control::Action::EndOfStream));
    let (got, status) = raw_call(&server.url(), messages).await;
    status.expect("stream ends OK");
    let run = Run { messages: got };
    let segs = run.segments();
    assert_eq!(segs[0].reason, "flush", "{segs:?}");
    assert!((segs[0].end_s - 2.0).abs() < 0.05, "{segs:?}");
    assert_eq!(
        segs.len(),
        4,
        "the rest of the first utterance forms its own segment: {segs:?}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_wav_stream_is_processed_as_it_arrives() {
    // FFmpeg's WAV demuxer reads 64 KiB past the header before any audio
    // comes out (2 s of 16 kHz mono; 4 s at 8 kHz): a live WAV client heard
    // nothing for that long. Its first second must be processed while the
    // client holds the stream open.
    let server = start_server(server_config()).await;
    let wav = read_media("speech.wav");
    let first = &wav[..44 + 32_000];
    let mut config = container_config();
    config.options = Some(pb::StreamOptions {
        stats_interval_ms: Some(250),
        ..Default::default()
    });
    let mut client = avlm_stream::client::connect(&server.url()).await.unwrap();
    let (tx, mut replies) = open_stream(
        &mut client,
        vec![config_msg(config), media_msg(first, 0)],
        4,
    )
    .await;
    let processed = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            match replies.message().await {
                Ok(Some(pb::ServerMessage {
                    msg: Some(pb::server_message::Msg::Stats(s)),
                })) if s.media_seconds_processed >= 0.5 => break s.media_seconds_processed,
                Ok(Some(_)) => continue,
                other => panic!("the stream ended early: {other:?}"),
            }
        }
    })
    .await
    .expect("no Stats for the first second of a WAV stream held open");
    assert!(processed <= 1.0 + 1e-9, "{processed}");
    drop(tx);
    server.shutdown().await.unwrap();
}
