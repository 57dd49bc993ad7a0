//! Prometheus metrics: one registry for the process, filled by the service
//! (sessions and their events, seen as they are sent) and the model thread
//! (work, rows, cache), and served as text at `/metrics` by `avlm serve
//! --metrics ADDR`.
//!
//! Names follow Prometheus conventions: `avlm_` prefix, the unit in the name,
//! `_total` on counters. Rates (real-time factor, busy ratio, tokens/s) are
//! left to PromQL over the counters.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// Labels of a session gauge: the task it runs.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabel {
    pub task: &'static str,
}

/// Labels of an ended session: its task and the gRPC status it ended with.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndLabels {
    pub task: &'static str,
    pub code: &'static str,
}

/// Labels of a media counter: which kind of media.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

type LatencyHistogram = Histogram;

/// Every metric avlm exports.
pub struct Metrics {
    registry: Registry,
    pub sessions_active: Family<TaskLabel, Gauge>,
    pub sessions_ended: Family<EndLabels, Counter>,
    pub media_seconds: Family<KindLabel, Counter<f64, AtomicU64>>,
    pub caption_frames: Counter,
    pub captions: Counter,
    pub finals: Counter,
    pub final_latency: LatencyHistogram,
    pub first_partial_latency: LatencyHistogram,
    pub model_busy_seconds: Counter<f64, AtomicU64>,
    pub queue_depth: Gauge,
    pub rows: Histogram,
    pub kv_cache_bytes: Gauge,
    pub decode_tokens: Counter,
    pub prefill_tokens: Counter,
    pub backlog_seconds: Gauge<f64, AtomicU64>,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    // 50 ms .. ~51 s
    exponential_buckets(0.05, 2.0, 11)
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("avlm");
        let m = Metrics {
            registry: Registry::default(),
            sessions_active: Family::default(),
            sessions_ended: Family::default(),
            media_seconds: Family::default(),
            caption_frames: Counter::default(),
            captions: Counter::default(),
            finals: Counter::default(),
            final_latency: Histogram::new(latency_buckets()),
            first_partial_latency: Histogram::new(latency_buckets()),
            model_busy_seconds: Counter::default(),
            queue_depth: Gauge::default(),
            rows: Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]),
            kv_cache_bytes: Gauge::default(),
            decode_tokens: Counter::default(),
            prefill_tokens: Counter::default(),
            backlog_seconds: Gauge::default(),
        };
        registry.register(
            "sessions_active",
            "Streams open now, by task",
            m.sessions_active.clone(),
        );
        registry.register(
            "sessions",
            "Streams ended, by task and the gRPC status they ended with",
            m.sessions_ended.clone(),
        );
        registry.register_with_unit(
            "media",
            "Media time processed (audio: through voice activity; video: frames the captioner looked at, at their durations)",
            Unit::Seconds,
            m.media_seconds.clone(),
        );
        registry.register(
            "caption_frames",
            "Video frames the captioner decided on",
            m.caption_frames.clone(),
        );
        registry.register("captions", "Captions sent", m.captions.clone());
        registry.register("finals", "Final transcripts sent", m.finals.clone());
        registry.register_with_unit(
            "final_latency",
            "Wall time from a segment's close (SPEECH_END sent) to its Final sent",
            Unit::Seconds,
            m.final_latency.clone(),
        );
        registry.register_with_unit(
            "first_partial_latency",
            "Wall time from speech confirmed (SPEECH_START sent) to the segment's first Partial sent",
            Unit::Seconds,
            m.first_partial_latency.clone(),
        );
        registry.register_with_unit(
            "model_busy",
            "Wall time the model thread spent working (busy ratio: its rate)",
            Unit::Seconds,
            m.model_busy_seconds.clone(),
        );
        registry.register(
            "scheduler_queue_depth",
            "Transcriptions handed to the model thread and not yet decoding",
            m.queue_depth.clone(),
        );
        registry.register(
            "scheduler_rows",
            "Rows (beams and speaking caption streams) in each batched decode step",
            m.rows.clone(),
        );
        registry.register_with_unit(
            "kv_cache",
            "KV cache memory held by the rows in flight",
            Unit::Bytes,
            m.kv_cache_bytes.clone(),
        );
        registry.register(
            "decode_tokens",
            "Tokens decoded, one a row a step",
            m.decode_tokens.clone(),
        );
        registry.register(
            "prefill_tokens",
            "Prompt positions prefilled (projected audio, frames, prompt text)",
            m.prefill_tokens.clone(),
        );
        registry.register_with_unit(
            "backlog",
            "Audio of closed segments handed to the model thread and not yet transcribed",
            Unit::Seconds,
            m.backlog_seconds.clone(),
        );
        // Series that exist from the start, so dashboards and autoscalers
        // read 0 rather than nothing before the first session.
        for task in ["segments", "transcribe", "caption"] {
            m.sessions_active.get_or_create(&TaskLabel { task }).set(0);
            m.sessions_ended
                .get_or_create(&EndLabels { task, code: "OK" })
                .inc_by(0);
        }
        for kind in ["audio", "video"] {
            m.media_seconds
                .get_or_create(&KindLabel { kind })
                .inc_by(0.0);
        }
        Metrics { registry, ..m }
    }

    /// The registry as Prometheus / OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A running `/metrics` endpoint.
pub struct MetricsServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `GET /metrics` on `listen` (port 0 picks a free one) until the
/// returned handle drops.
pub async fn serve(listen: SocketAddr) -> anyhow::Result<MetricsServer> {
    use axum::http::header::CONTENT_TYPE as HEADER;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for metrics on {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async { ([(HEADER, CONTENT_TYPE)], get().encode()) }),
    );
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the metrics endpoint stopped");
        }
    });
    tracing::info!(%addr, "metrics at /metrics");
    Ok(MetricsServer { addr, task })
}
