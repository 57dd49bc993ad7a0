//! TRANSCRIBE over the real server with the default bundle: a Final per
//! speech segment, with the segment's times, deterministic, and refused
//! cleanly where it cannot run.

mod common;

use avlm_proto as pb;
use common::*;
use tonic::Code;

fn transcribe_config() -> pb::StreamConfig {
    pb::StreamConfig {
        task: pb::Task::Transcribe as i32,
        ..container_config()
    }
}

/// Streams speech.webm at its own pace, as a live client would.
async fn live_speech(url: &str, config: pb::StreamConfig) -> Run {
    let mut run = Run::default();
    avlm_stream::client::stream(
        url,
        config,
        avlm_stream::client::Source::File(media("speech.webm")),
        avlm_stream::client::SendOptions {
            chunk_bytes: 2048,
            realtime: true,
            stop: None,
        },
        |m| run.messages.push(m.clone()),
    )
    .await
    .unwrap();
    run
}

fn finals(run: &Run) -> Vec<pb::Final> {
    run.messages
        .iter()
        .filter_map(|m| match &m.msg {
            Some(pb::server_message::Msg::Final(f)) => Some(f.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_speech_segment_gets_a_final_with_its_times() {
    let server = start_server(transcribe_server_config()).await;
    let run = stream_bytes(
        &server.url(),
        transcribe_config(),
        read_media("speech.webm"),
        16 * 1024,
    )
    .await
    .expect("transcribe stream");
    let segments = run.segments();
    assert_eq!(segments.len(), 3);
    let finals = finals(&run);
    assert_eq!(
        finals.len(),
        segments.len(),
        "one Final per segment: {finals:?}"
    );
    for (seg, fin) in segments.iter().zip(&finals) {
        assert_eq!(fin.segment_id, seg.id);
        assert_eq!((fin.start_s, fin.end_s), (seg.start_s, seg.end_s));
        assert!(
            !fin.text.is_empty(),
            "segment {} decoded to nothing",
            seg.id
        );
        assert!(fin.decode_latency_s > 0.0);
    }
    // The whole file arrives at once, so Finals are owed when the stream
    // ends: the last Stats still comes last, with nothing pending, and
    // earlier Stats never count fewer segments than the client awaits.
    let last = run.messages.last().and_then(|m| m.msg.as_ref());
    let Some(pb::server_message::Msg::Stats(stats)) = last else {
        panic!("the last message is not Stats: {last:?}");
    };
    assert_eq!((stats.segments_pending, stats.seconds_buffered), (0, 0.0));
    let (mut ended, mut finished) = (0u32, 0u32);
    for m in &run.messages {
        match &m.msg {
            Some(pb::server_message::Msg::Segment(s))
                if s.kind == pb::segment::Kind::SpeechEnd as i32 =>
            {
                ended += 1
            }
            Some(pb::server_message::Msg::Final(_)) => finished += 1,
            Some(pb::server_message::Msg::Stats(s)) => {
                assert!(
                    s.segments_pending >= ended.saturating_sub(finished),
                    "{s:?}"
                )
            }
            _ => {}
        }
    }
    // Deterministic: the same media gives the same text.
    let again = stream_bytes(
        &server.url(),
        transcribe_config(),
        read_media("speech.webm"),
        4096,
    )
    .await
    .unwrap();
    let texts = |f: &[pb::Final]| f.iter().map(|f| f.text.clone()).collect::<Vec<_>>();
    assert_eq!(texts(&finals), texts(&self::finals(&again)));

    let mut client = avlm_stream::client::connect(&server.url()).await.unwrap();
    let info = client
        .get_info(pb::GetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(info.tasks.contains(&(pb::Task::Transcribe as i32)));
    assert!(info.models[0].llm.contains("GGUF"), "{:?}", info.models[0]);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcribe_without_a_bundle_or_past_30s_segments_is_refused() {
    let server = start_server(server_config()).await;
    let (_, status) = raw_call(&server.url(), vec![config_msg(transcribe_config())]).await;
    assert_eq!(status.unwrap_err().code(), Code::Unimplemented);
    server.shutdown().await.unwrap();

    let server = start_server(transcribe_server_config()).await;
    let mut config = transcribe_config();
    config.options.as_mut().unwrap().max_segment_ms = Some(60_000);
    let (_, status) = raw_call(&server.url(), vec![config_msg(config)]).await;
    let status = status.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("max_segment_ms"),
        "{}",
        status.message()
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_without_speech_produces_no_text() {
    let server = start_server(transcribe_server_config()).await;
    for file in [
        "silence.webm",
        "white_noise.webm",
        "pink_noise.webm",
        "tones.webm",
    ] {
        let run = stream_bytes(&server.url(), transcribe_config(), read_media(file), 8192)
            .await
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let texts: Vec<&pb::server_message::Msg> = run
            .messages
            .iter()
            .filter_map(|m| m.msg.as_ref())
            .filter(|m| {
                matches!(
                    m,
                    pb::server_message::Msg::Partial(_)
                        | pb::server_message::Msg::Final(_)
                        | pb::server_message::Msg::Segment(_)
                )
            })
            .collect();
        assert!(texts.is_empty(), "{file}: {texts:?}");
        assert!(
            run.last_stats().unwrap().media_seconds_processed > 19.0,
            "{file}"
        );
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partials_commit_only_forward_and_finals_start_with_the_committed_words() {
    let server = start_server(short_decode_server_config("partials", 12)).await;
    let mut config = transcribe_config();
    let options = config.options.as_mut().unwrap();
    options.partial_results = Some(true);
    options.partial_interval_ms = Some(300);
    let run = live_speech(&server.url(), config).await;
    let finals = finals(&run);
    assert_eq!(finals.len(), 3);
    let mut partials = 0;
    for f in &finals {
        let mut committed: Vec<String> = Vec::new();
        for m in &run.messages {
            let Some(pb::server_message::Msg::Partial(p)) = &m.msg else {
                continue;
            };
            if p.segment_id != f.segment_id {
                continue;
            }
            partials += 1;
            // stable + unstable reads as one text: no words glued together.
            assert!(
                p.stable_text.is_empty()
                    || p.unstable_text.is_empty()
                    || p.unstable_text.starts_with(' '),
                "partial {:?} + {:?} glues two words",
                p.stable_text,
                p.unstable_text
            );
            let words: Vec<String> = p
                .stable_text
                .split_whitespace()
                .map(str::to_string)
                .collect();
            assert!(
                words.starts_with(&committed),
                "committed text shrank or changed: {committed:?} -> {words:?}"
            );
            // The committed words come with their times, within the audio
            // the partial saw.
            assert_eq!(
                p.words.iter().map(|w| w.text.clone()).collect::<Vec<_>>(),
                words,
                "a partial's timed words are its committed words"
            );
            for w in &p.words {
                assert!(
                    w.start_s <= w.end_s && w.end_s <= p.end_s + 1e-9,
                    "{w:?} in {p:?}"
                );
            }
            committed = words;
        }
        let final_words: Vec<String> = f.text.split_whitespace().map(str::to_string).collect();
        assert!(
            final_words.starts_with(&committed),
            "final {final_words:?} does not start with committed {committed:?}"
        );
    }
    assert!(partials > 0, "no partial results at real-time pace");
    // Partials of a segment come before its final.
    let pos = |pred: &dyn Fn(&pb::server_message::Msg) -> bool| {
        run.messages
            .iter()
            .rposition(|m| m.msg.as_ref().is_some_and(pred))
    };
    for f in &finals {
        let id = f.segment_id;
        let last_partial =
            pos(&|m| matches!(m, pb::server_message::Msg::Partial(p) if p.segment_id == id));
        let final_at =
            pos(&|m| matches!(m, pb::server_message::Msg::Final(x) if x.segment_id == id));
        if let (Some(p), Some(fa)) = (last_partial, final_at) {
            assert!(p < fa, "a partial of segment {id} came after its final");
        }
    }
    server.shutdown().await.unwrap();
}

/// Splitting long speech at `max_segment_ms` while partials run: a split
/// never falls before audio a partial has heard (whose committed words the
/// Final must hold), and never opens a segment in the silence after speech.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splits_keep_partial_audio_whole_and_open_no_empty_segments() {
    let server = start_server(short_decode_server_config("splits", 12)).await;
    let mut config = transcribe_config();
    let options = config.options.as_mut().unwrap();
    options.partial_results = Some(true);
    options.partial_interval_ms = Some(200);
    options.max_segment_ms = Some(1500);
    let run = live_speech(&server.url(), config).await;
    let segments = run.segments();
    assert!(
        segments.iter().any(|s| s.reason == "max_length"),
        "{segments:?}"
    );
    let speech = manifest().speech;
    for s in &segments {
        assert!(
            s.end_s - s.start_s >= 0.25,
            "shorter than min_speech: {s:?}"
        );
        assert!(
            speech
                .iter()
                .any(|k| s.start_s < k.end_s + 0.1 && s.end_s > k.start_s - 0.1),
            "a segment with no speech in it: {s:?}"
        );
    }
    let finals = finals(&run);
    assert_eq!(finals.len(), segments.len());
    for m in &run.messages {
        let Some(pb::server_message::Msg::Partial(p)) = &m.msg else {
            continue;
        };
        let f = finals
            .iter()
            .find(|f| f.segment_id == p.segment_id)
            .expect("a Final for every partial's segment");
        assert!(
            p.end_s <= f.end_s + 1e-6,
            "segment {} was cut at {} before audio its partial heard ({})",
            f.segment_id,
            f.end_s,
            p.end_s
        );
    }
    server.shutdown().await.unwrap();
}

/// Requests the model thread has not answered yet.
fn owed(server: &avlm_stream::server::RunningServer) -> u64 {
    let engine = server.state.engine.as_ref().expect("a model is loaded");
    engine
        .load()
        .in_flight
        .load(std::sync::atomic::Ordering::Acquire)
}

/// A session waiting for its transcripts is still a session: it keeps its
/// slot (and counts as active) until its last Final is out, so
/// `--max-sessions` bounds the model work queued, not only the media read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_holds_its_slot_until_its_last_final() {
    let mut config = transcribe_server_config();
    config.max_sessions = 1;
    let server = start_server(config).await;
    let mut client = avlm_stream::client::connect(&server.url()).await.unwrap();
    let media = whole_stream(transcribe_config(), &read_media("speech.webm"), 16 * 1024);
    let (tx, mut inbound) = open_stream(&mut client, media, 1).await;
    let (mut ends, mut finals, mut refused_while_waiting) = (0, 0, false);
    while let Some(m) = inbound.message().await.unwrap() {
        match m.msg {
            Some(pb::server_message::Msg::Segment(s))
                if s.kind == pb::segment::Kind::SpeechEnd as i32 =>
            {
                ends += 1;
            }
            Some(pb::server_message::Msg::Final(_)) => finals += 1,
            _ => {}
        }
        // While the model still owes this (only) session work, the
        // session holds its slot. The count is read before the engine's
        // backlog: a slot freed while work was still owed fails here. (The
        // client may read the last SpeechEnd after every Final is already
        // queued to it, when the slot is rightly free.)
        let active = server.state.active_sessions();
        if ends >= 1 && finals < 3 && owed(&server) > 0 {
            assert_eq!(
                active,
                1,
                "a session still owed {} Finals was no longer counted",
                3 - finals
            );
            if !refused_while_waiting {
                let (_, status) =
                    raw_call(&server.url(), whole_stream(container_config(), b"", 1)).await;
                // Accepted only when the work ran out in between.
                if let Err(status) = status {
                    assert_eq!(status.code(), Code::ResourceExhausted);
                    refused_while_waiting = true;
                }
            }
        }
    }
    assert_eq!((ends, finals), (3, 3));
    assert!(refused_while_waiting);
    drop(tx);
    let start = std::time::Instant::now();
    while server.state.active_sessions() != 0 {
        assert!(
            start.elapsed().as_secs() < 1,
            "slot not freed after the call ended"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_server_still_serves(&server.url()).await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_absurd_float_sample_does_not_wipe_out_its_segment() {
    let server = start_server(transcribe_server_config()).await;
    let f32_pcm = |spike: Option<f32>| {
        let pcm16 = read_media("speech.s16le");
        let mut samples: Vec<f32> = pcm16
            .chunks_exact(2)
            .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
            .collect();
        if let Some(v) = spike {
            // Inside the first utterance (0.8-4.85 s).
            samples[2 * 16_000] = v;
        }
        samples
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect::<Vec<u8>>()
    };
    let config = pb::StreamConfig {
        input: Some(pb::stream_config::Input::RawPcm(pb::RawPcmInput {
            sample_format: pb::SampleFormat::F32le as i32,
            sample_rate: 16_000,
            channels: 1,
        })),
        ..transcribe_config()
    };
    let texts = |run: &Run| finals(run).into_iter().map(|f| f.text).collect::<Vec<_>>();
    let clean = stream_bytes(&server.url(), config.clone(), f32_pcm(None), 16 * 1024)
        .await
        .expect("clean f32");
    // Finite but absurd: it used to set the log-mel's range for the whole
    // utterance ("what's the what"); full-scale clipping leaves one click.
    let spiked = stream_bytes(&server.url(), config, f32_pcm(Some(1e19)), 16 * 1024)
        .await
        .expect("f32 with a spike");
    assert_eq!(texts(&clean).len(), 3, "{:?}", texts(&clean));
    assert_eq!(texts(&spiked), texts(&clean));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_utterance_of_nothing_or_of_silence_has_no_words() {
    let server = start_server(transcribe_server_config()).await;
    let config = pb::StreamConfig {
        input: Some(pb::stream_config::Input::RawPcm(pb::RawPcmInput {
            sample_format: pb::SampleFormat::S16le as i32,
            sample_rate: 16_000,
            channels: 1,
        })),
        options: Some(pb::StreamOptions {
            whole_utterance: Some(true),
            stats_interval_ms: Some(1000),
            ..Default::default()
        }),
        ..transcribe_config()
    };
    // No bytes: no utterance, no Final (as with voice activity detection).
    let run = stream_bytes(&server.url(), config.clone(), Vec::new(), 4096)
        .await
        .expect("an empty whole utterance");
    assert!(finals(&run).is_empty(), "{:?}", finals(&run));
    // Digital silence: its Final has no words, and Stats come every second.
    let run = stream_bytes(&server.url(), config, vec![0u8; 5 * 32_000], 4096)
        .await
        .expect("5 s of silence");
    let texts: Vec<String> = finals(&run).into_iter().map(|f| f.text).collect();
    assert_eq!(texts, vec![String::new()]);
    let stats = run
        .messages
        .iter()
        .filter(|m| matches!(m.msg, Some(pb::server_message::Msg::Stats(_))))
        .count();
    assert!(stats >= 5, "{stats} Stats for 5 s at a 1 s interval");
    server.shutdown().await.unwrap();
}

/// A session's Stats say how much of its work waits on the model and for
/// how long, while another session's decodes hold the model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_show_the_backlog_while_another_sessions_decodes_run() {
    let server = start_server(transcribe_server_config()).await;
    let config = || {
        let mut c = container_config();
        c.task = pb::Task::Transcribe as i32;
        c.options.as_mut().unwrap().stats_interval_ms = Some(500);
        c
    };
    // One stream first: the model's recent rate is known after it.
    stream_bytes(&server.url(), config(), read_media("short.webm"), 4096)
        .await
        .expect("warm-up stream");
    // Two whole files sent at once: each one's segments close far faster
    // than the model transcribes them, so finals are owed while the other
    // session's decodes run.
    let url = server.url();
    let a = tokio::spawn({
        let url = url.clone();
        async move { stream_bytes(&url, config(), read_media("speech.webm"), 4096).await }
    });
    let b = stream_bytes(&url, config(), read_media("speech.webm"), 4096)
        .await
        .expect("second stream");
    a.await.unwrap().expect("first stream");
    let stats: Vec<pb::Stats> = b
        .messages
        .iter()
        .filter_map(|m| match &m.msg {
            Some(pb::server_message::Msg::Stats(s)) => Some(*s),
            _ => None,
        })
        .collect();
    let waiting: Vec<&pb::Stats> = stats.iter().filter(|s| s.segments_pending > 0).collect();
    assert!(
        !waiting.is_empty(),
        "no Stats showed a pending final: {stats:?}"
    );
    for s in &waiting {
        assert!(s.audio_seconds_pending > 0.0, "{s:?}");
        assert!(
            s.expected_delay_s > 0.0,
            "finals pending but no expected delay: {s:?}"
        );
        // The estimate is bounded by all the audio in flight (two copies of
        // the file) at the rate the model has shown (well under real time).
        assert!(s.expected_delay_s < 60.0, "{s:?}");
    }
    let last = stats.last().unwrap();
    assert_eq!((last.segments_pending, last.expected_delay_s), (0, 0.0));
    server.shutdown().await.unwrap();
}

/// Past the server's limit of audio queued for the model, new streams that
/// need the model are refused with RESOURCE_EXHAUSTED naming the limit,
/// while streams that do not (segments) are still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_model_queue_sheds_new_transcriptions_with_resource_exhausted() {
    let server = start_server(avlm_stream::config::ServerConfig {
        max_queued_audio_s: Some(1.0),
        ..transcribe_server_config()
    })
    .await;
    let url = server.url();
    let first = tokio::spawn({
        let url = url.clone();
        async move { stream_bytes(&url, transcribe_config(), read_media("speech.webm"), 4096).await }
    });
    let engine = server.state.engine.as_ref().unwrap();
    let started = std::time::Instant::now();
    while engine.load().backlog_s() <= 1.0 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "the first stream never queued more than 1 s of audio"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let refused = stream_bytes(&url, transcribe_config(), read_media("short.webm"), 4096).await;
    match refused {
        Err(avlm_stream::client::ClientError::Status(s)) => {
            assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
            assert!(
                s.message().contains("max-queued-audio-s"),
                "{}",
                s.message()
            );
        }
        other => panic!("a transcription was taken past the queue limit: {other:?}"),
    }
    // Segments need no model: served as ever.
    let segments = stream_bytes(&url, container_config(), read_media("short.webm"), 4096)
        .await
        .expect("segments are served");
    assert_eq!(segments.segments().len(), 1);
    // The first stream, already admitted, loses nothing.
    let first = first.await.unwrap().expect("the admitted stream ends OK");
    assert_eq!(finals(&first).len(), first.segments().len());
    server.shutdown().await.unwrap();
}

/// Word times against the word timings of the latency clips (their
/// synthesiser's own word boundaries): each Final's words carry media
/// times from the CTC head's forced alignment, within a measured bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn final_words_carry_times_close_to_the_spoken_words() {
    #[derive(serde::Deserialize)]
    struct Timed {
        word: String,
        start_s: f64,
        end_s: f64,
    }
    #[derive(serde::Deserialize)]
    struct Clip {
        words: Vec<Timed>,
    }
    let norm = |w: &str| -> String {
        w.chars()
            .filter(|c| c.is_alphanumeric())
            .flat_map(char::to_lowercase)
            .collect()
    };
    let server = start_server(transcribe_server_config()).await;
    let latency = repo_root().join("samples/latency");
    let (mut starts, mut ends) = (Vec::new(), Vec::new());
    let mut reference_words = 0;
    for clip in ["clip1", "clip2"] {
        let truth: Clip =
            serde_json::from_slice(&std::fs::read(latency.join(format!("{clip}.json"))).unwrap())
                .unwrap();
        reference_words += truth.words.len();
        let bytes = std::fs::read(latency.join(format!("{clip}.flac"))).unwrap();
        let run = stream_bytes(&server.url(), transcribe_config(), bytes, 16 * 1024)
            .await
            .unwrap();
        let mut hyp = Vec::new();
        for f in finals(&run) {
            assert_eq!(
                f.words.iter().map(|w| w.text.as_str()).collect::<Vec<_>>(),
                f.text.split_whitespace().collect::<Vec<_>>(),
                "a Final's words are its text's words"
            );
            for w in &f.words {
                assert!(
                    f.start_s - 0.5 <= w.start_s
                        && w.start_s <= w.end_s
                        && w.end_s <= f.end_s + 1e-9,
                    "{w:?} outside its segment {}..{}",
                    f.start_s,
                    f.end_s
                );
            }
            hyp.extend(f.words.clone());
        }
        // Words matched in order (longest common subsequence by text).
        let (a, b) = (&truth.words, &hyp);
        let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
        for i in (0..a.len()).rev() {
            for j in (0..b.len()).rev() {
                lcs[i][j] = if norm(&a[i].word) == norm(&b[j].text) {
                    lcs[i + 1][j + 1] + 1
                } else {
                    lcs[i + 1][j].max(lcs[i][j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < a.len() && j < b.len() {
            if norm(&a[i].word) == norm(&b[j].text) {
                starts.push((b[j].start_s - a[i].start_s).abs() * 1000.0);
                ends.push((b[j].end_s - a[i].end_s).abs() * 1000.0);
                i += 1;
                j += 1;
            } else if lcs[i + 1][j] >= lcs[i][j + 1] {
                i += 1;
            } else {
                j += 1;
            }
        }
    }
    let stats = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let p95 = v[((v.len() as f64 * 0.95).ceil() as usize).min(v.len()) - 1];
        (mean, p95)
    };
    let matched = starts.len();
    let (start_mean, start_p95) = stats(&mut starts);
    let (end_mean, end_p95) = stats(&mut ends);
    eprintln!(
        "word times: {matched} of {reference_words} words matched; start error mean {start_mean:.0} ms, p95 {start_p95:.0} ms; end error mean {end_mean:.0} ms, p95 {end_p95:.0} ms"
    );
    assert!(
        matched * 2 >= reference_words,
        "{matched} of {reference_words} words matched"
    );
    assert!(
        start_mean < BOUND_MEAN_MS && end_mean < BOUND_MEAN_MS,
        "mean {start_mean:.0} / {end_mean:.0} ms"
    );
    assert!(
        start_p95 < BOUND_P95_MS && end_p95 < BOUND_P95_MS,
        "p95 {start_p95:.0} / {end_p95:.0} ms"
    );
    server.shutdown().await.unwrap();
}

/// The word-time bounds the test holds the default model to (measured on
/// these clips: start error mean 74 ms, p95 185 ms; end error mean 128 ms,
/// p95 255 ms; 80 ms frames).
const BOUND_MEAN_MS: f64 = 200.0;
const BOUND_P95_MS: f64 = 400.0;
