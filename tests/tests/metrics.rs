//! Prometheus metrics after real transcription streams: present, named by
//! convention, and moving by what the streams did. (Its own test binary:
//! the metrics are the process's.)

mod common;

use std::collections::HashMap;

use avlm_proto as pb;
use common::*;

/// `/metrics` of the endpoint at `addr`, as name{labels} -> value.
async fn scrape(addr: std::net::SocketAddr) -> (String, HashMap<String, f64>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: avlm\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    let values = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap();
            (name.to_string(), value.parse::<f64>().unwrap())
        })
        .collect();
    (body.to_string(), values)
}

fn get(values: &HashMap<String, f64>, name: &str) -> f64 {
    *values
        .get(name)
        .unwrap_or_else(|| panic!("{name} missing from {values:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_transcription_streams() {
    let endpoint = avlm_stream::metrics::serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let server = start_server(transcribe_server_config()).await;
    let (text, before) = scrape(endpoint.addr).await;
    // Every family is described, with units and _total where due.
    for (name, kind) in [
        ("avlm_sessions_active", "gauge"),
        ("avlm_sessions", "counter"),
        ("avlm_media_seconds", "counter"),
        ("avlm_final_latency_seconds", "histogram"),
        ("avlm_first_partial_latency_seconds", "histogram"),
        ("avlm_model_busy_seconds", "counter"),
        ("avlm_scheduler_queue_depth", "gauge"),
        ("avlm_scheduler_rows", "histogram"),
        ("avlm_kv_cache_bytes", "gauge"),
        ("avlm_decode_tokens", "counter"),
        ("avlm_prefill_tokens", "counter"),
        ("avlm_backlog_seconds", "gauge"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} {kind}: {text}"
        );
        assert!(text.contains(&format!("# HELP {name} ")), "{name}: {text}");
    }
    assert_eq!(
        get(&before, r#"avlm_sessions_active{task="transcribe"}"#),
        0.0
    );

    let mut config = container_config();
    config.task = pb::Task::Transcribe as i32;
    config.options.as_mut().unwrap().partial_results = Some(true);
    config.options.as_mut().unwrap().stats_interval_ms = Some(1000);
    let run = stream_bytes(&server.url(), config, read_media("speech.webm"), 4096)
        .await
        .expect("transcribe");
    let finals = run
        .messages
        .iter()
        .filter(|m| matches!(m.msg, Some(pb::server_message::Msg::Final(_))))
        .count();
    assert!(finals >= 3, "{finals} finals");
    // One first-partial latency per segment that had a partial.
    let mut with_partial = std::collections::HashSet::new();
    for m in &run.messages {
        if let Some(pb::server_message::Msg::Partial(p)) = &m.msg {
            with_partial.insert(p.segment_id);
        }
    }
    let processed = run.last_stats().unwrap().media_seconds_processed;

    // The session's end is counted as the reply stream closes: give the
    // server a moment after the client saw the end.
    let mut after = HashMap::new();
    for _ in 0..50 {
        after = scrape(endpoint.addr).await.1;
        if get(
            &after,
            r#"avlm_sessions_total{task="transcribe",code="OK"}"#,
        ) >= 1.0
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let delta = |name: &str| get(&after, name) - before.get(name).copied().unwrap_or(0.0);
    assert_eq!(
        delta(r#"avlm_sessions_total{task="transcribe",code="OK"}"#),
        1.0
    );
    assert_eq!(
        get(&after, r#"avlm_sessions_active{task="transcribe"}"#),
        0.0
    );
    assert_eq!(delta("avlm_final_latency_seconds_count"), finals as f64);
    assert!(delta("avlm_final_latency_seconds_sum") > 0.0);
    assert_eq!(
        delta("avlm_first_partial_latency_seconds_count"),
        with_partial.len() as f64
    );
    assert!(
        (delta(r#"avlm_media_seconds_total{kind="audio"}"#) - processed).abs() < 1e-6,
        "media seconds {} vs {processed}",
        delta(r#"avlm_media_seconds_total{kind="audio"}"#)
    );
    assert_eq!(delta("avlm_finals_total"), finals as f64);
    assert!(delta("avlm_model_busy_seconds_total") > 0.0);
    assert!(delta("avlm_decode_tokens_total") > 0.0);
    assert!(delta("avlm_prefill_tokens_total") > 0.0);
    // Each decode step's rows are one decoded token each.
    assert_eq!(
        delta("avlm_scheduler_rows_sum"),
        delta("avlm_decode_tokens_total")
    );
    assert!(delta("avlm_scheduler_rows_count") > 0.0);
    // Nothing is left queued once the finals are out.
    assert_eq!(get(&after, "avlm_backlog_seconds"), 0.0);
    assert_eq!(get(&after, "avlm_scheduler_queue_depth"), 0.0);

    // A refused stream is counted with its status.
    let (_, status) = raw_call(
        &server.url(),
        vec![config_msg(pb::StreamConfig {
            task: 99,
            ..container_config()
        })],
    )
    .await;
    let code = status.unwrap_err().code();
    assert_eq!(code, tonic::Code::InvalidArgument);
    let mut refused = 0.0;
    for _ in 0..50 {
        let now = scrape(endpoint.addr).await.1;
        refused = now
            .iter()
            .filter(|(k, _)| k.contains(r#"code="INVALID_ARGUMENT""#))
            .map(|(_, v)| v)
            .sum();
        if refused > 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(refused, 1.0);
    server.shutdown().await.unwrap();
}
