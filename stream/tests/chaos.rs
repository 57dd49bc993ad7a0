//! The chaos load test, short: concurrent good and misbehaving clients
//! against a real `avlm serve` process. `avlm bench --parts chaos` runs it
//! for minutes.

use std::path::Path;
use std::time::Duration;

use avlm_stream::chaos::{run, ChaosConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn good_streams_match_running_alone_and_bad_ones_get_their_status_under_load() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let report = run(ChaosConfig {
        avlm: env!("CARGO_BIN_EXE_avlm").into(),
        serve_args: Vec::new(),
        media: root.join("samples/demo.webm"),
        clients: 16,
        duration: Duration::from_secs(30),
        seed: 7,
        idle_timeout_s: 3,
        max_message_bytes: 1 << 20,
        max_queued_audio_s: 600.0,
    })
    .await
    .expect("chaos run");
    report.print();
    assert_eq!(report.failures(), 0, "{:#?}", report.tallies);
    assert_eq!(
        report.tallies.len(),
        11,
        "every behaviour runs: {:?}",
        report.tallies.keys()
    );
    assert_eq!(report.active_after, 0);
    assert!(
        report.active_peak as usize <= 16,
        "more active sessions than open calls: {}",
        report.active_peak
    );
    // Nothing leaks: threads and descriptors are back where they were.
    assert!(
        report.after.threads <= report.before.threads + 2,
        "threads {} before, {} after",
        report.before.threads,
        report.after.threads
    );
    assert!(
        report.after.fds <= report.before.fds + 2,
        "file descriptors {} before, {} after",
        report.before.fds,
        report.after.fds
    );
    // The server stays responsive: GetInfo answers promptly under load.
    let slowest = report
        .info_latency
        .iter()
        .max()
        .copied()
        .unwrap_or_default();
    assert!(
        slowest < Duration::from_secs(2),
        "GetInfo took {slowest:?} under load"
    );
    // Memory is bounded during the storm and given back after it.
    let mb = |b: u64| b >> 20;
    assert!(
        mb(report.peak.rss_bytes) < 4096,
        "peak {} MiB",
        mb(report.peak.rss_bytes)
    );
    assert!(
        report.after.rss_bytes
            < report.before.rss_bytes
                + (report.peak.rss_bytes - report.before.rss_bytes) / 2
                + (64 << 20),
        "memory not given back: {} MiB before, {} MiB peak, {} MiB after",
        mb(report.before.rss_bytes),
        mb(report.peak.rss_bytes),
        mb(report.after.rss_bytes)
    );
}
