//! The chaos load test: many concurrent clients against a real server
//! process for minutes, good ones (live pace and as fast as possible, audio
//! and audio+video, transcription and segments) mixed with misbehaving ones
//! (cancelling, not reading, half-closing early, garbage, oversized
//! messages, sequence gaps, no config). It checks that every good stream
//! ends OK with the same events as when run alone, every bad one ends with
//! its named status, the server's memory stays bounded, its active sessions
//! return to 0, and no thread or file descriptor leaks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use avlm_proto as pb;
use tokio::sync::mpsc;
use tonic::Code;

use crate::client::{self, SendOptions, Source};

/// What to run.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// The `avlm` binary that serves (`avlm serve`).
    pub avlm: PathBuf,
    /// Extra `avlm serve` arguments (a bundle, runtime paths).
    pub serve_args: Vec<String>,
    /// Media with speech and video (the bundled sample).
    pub media: PathBuf,
    pub clients: usize,
    pub duration: Duration,
    pub seed: u64,
    /// The server's idle timeout: clients that send nothing or read
    /// nothing are ended after it.
    pub idle_timeout_s: u64,
    /// Largest client message the server takes.
    pub max_message_bytes: usize,
    /// The server's limit of audio queued for the model: past it, new
    /// transcriptions are shed (counted apart).
    pub max_queued_audio_s: f64,
}

/// A client's behaviour in one round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Behaviour {
    /// Transcription of the audio at the media's own pace.
    LiveTranscribe,
    /// Transcription of the audio, sent as fast as the server takes it.
    FastTranscribe,
    /// Segments of audio+video, as fast as possible.
    FastAudioVideo,
    /// Segments of the audio at the media's own pace.
    LiveSegments,
    /// Drops the call part way.
    Cancel,
    /// Sends everything, then never reads a reply.
    StopsReading,
    /// Sends part of the media, then half-closes.
    HalfCloseEarly,
    /// Random bytes as media.
    Garbage,
    /// One message over the server's limit.
    Oversized,
    /// Skips a sequence number.
    SequenceGap,
    /// Opens the call and sends nothing.
    NoConfig,
}

const BEHAVIOURS: [(Behaviour, u32); 11] = [
    (Behaviour::LiveTranscribe, 2),
    (Behaviour::FastTranscribe, 3),
    (Behaviour::FastAudioVideo, 2),
    (Behaviour::LiveSegments, 2),
    (Behaviour::Cancel, 2),
    (Behaviour::StopsReading, 1),
    (Behaviour::HalfCloseEarly, 2),
    (Behaviour::Garbage, 2),
    (Behaviour::Oversized, 1),
    (Behaviour::SequenceGap, 2),
    (Behaviour::NoConfig, 1),
];

/// How the rounds of one behaviour went.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub rounds: usize,
    pub as_expected: usize,
    /// Good streams the server refused at admission because its model
    /// queue was over its limit (counted in `as_expected`).
    pub shed: usize,
    /// What went otherwise, a line each (first few kept).
    pub failures: Vec<String>,
}

/// A sample of the server process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessSample {
    pub rss_bytes: u64,
    pub threads: usize,
    pub fds: usize,
}

/// What a run found.
#[derive(Debug, Default)]
pub struct ChaosReport {
    pub tallies: BTreeMap<Behaviour, Tally>,
    pub before: ProcessSample,
    pub peak: ProcessSample,
    pub after: ProcessSample,
    /// Active sessions the server reported once the clients stopped (after
    /// waiting for it to settle).
    pub active_after: u32,
    /// Most active sessions the server reported during the run.
    pub active_peak: u32,
    /// How long each GetInfo call took during the run (one every half second).
    pub info_latency: Vec<Duration>,
    pub wall: Duration,
}

impl ChaosReport {
    pub fn failures(&self) -> usize {
        self.tallies
            .values()
            .map(|t| t.rounds - t.as_expected)
            .sum()
    }

    /// A table of the run.
    pub fn print(&self) {
        println!(
            "chaos: {:.0} s, {} streams, {} not as expected",
            self.wall.as_secs_f64(),
            self.tallies.values().map(|t| t.rounds).sum::<usize>(),
            self.failures()
        );
        println!(
            "{:<18} {:>7} {:>9} {:>5}",
            "behaviour", "streams", "expected", "shed"
        );
        for (b, t) in &self.tallies {
            println!(
                "{:<18} {:>7} {:>9} {:>5}",
                format!("{b:?}"),
                t.rounds,
                t.as_expected,
                t.shed
            );
            for f in t.failures.iter().take(3) {
                println!("    ! {f}");
            }
        }
        let mb = |b: u64| b as f64 / (1 << 20) as f64;
        println!(
            "server memory: {:.0} MiB before, {:.0} MiB peak, {:.0} MiB after",
            mb(self.before.rss_bytes),
            mb(self.peak.rss_bytes),
            mb(self.after.rss_bytes)
        );
        println!(
            "server threads: {} before, {} peak, {} after; file descriptors: {} before, {} peak, {} after",
            self.before.threads,
            self.peak.threads,
            self.after.threads,
            self.before.fds,
            self.peak.fds,
            self.after.fds
        );
        println!(
            "active sessions: {} at most during the run, {} after",
            self.active_peak, self.active_after
        );
        let mut info = self.info_latency.clone();
        info.sort();
        if let Some(max) = info.last() {
            println!(
                "GetInfo during the run: {} calls, median {:.1} ms, max {:.1} ms",
                info.len(),
                info[info.len() / 2].as_secs_f64() * 1e3,
                max.as_secs_f64() * 1e3
            );
        }
    }
}

/// Reads the server process's resident memory, threads and open files.
pub fn sample(pid: u32) -> ProcessSample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let count = |dir: String| std::fs::read_dir(dir).map_or(0, |d| d.count());
    ProcessSample {
        rss_bytes: field("VmRSS:") * 1024,
        threads: field("Threads:") as usize,
        fds: count(format!("/proc/{pid}/fd")),
    }
}

/// A small deterministic generator (splitmix64): the same seed plays the
/// same mix.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick(&mut self) -> Behaviour {
        let total: u32 = BEHAVIOURS.iter().map(|(_, w)| w).sum();
        let mut r = self.below(u64::from(total)) as u32;
        for (b, w) in BEHAVIOURS {
            if r < w {
                return b;
            }
            r -= w;
        }
        unreachable!()
    }
}

/// A server process for the run; killed when dropped.
struct ServerProcess {
    child: std::process::Child,
    url: String,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(config: &ChaosConfig) -> anyhow::Result<ServerProcess> {
    use std::io::BufRead;
    let mut child = std::process::Command::new(&config.avlm)
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(["--max-sessions", &(config.clients * 2).to_string()])
        .args(["--idle-timeout-s", &config.idle_timeout_s.to_string()])
        .args(["--max-message-bytes", &config.max_message_bytes.to_string()])
        .args([
            "--max-queued-audio-s",
            &config.max_queued_audio_s.to_string(),
        ])
        .args(&config.serve_args)
        .env("AVLM_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", config.avlm.display()))?;
    let mut stderr = std::io::BufReader::new(child.stderr.take().expect("piped"));
    let mut line = String::new();
    loop {
        line.clear();
        if stderr.read_line(&mut line)? == 0 {
            anyhow::bail!("the server exited before serving");
        }
        if let Some(url) = line.split_whitespace().find(|w| w.starts_with("http://")) {
            let url = url.to_string();
            // Keep draining stderr so the server never blocks on it.
            std::thread::spawn(move || {
                let mut sink = String::new();
                while stderr.read_line(&mut sink).is_ok_and(|n| n > 0) {
                    sink.clear();
                }
            });
            return Ok(ServerProcess { child, url });
        }
    }
}

/// The error text of a stream the server refused at admission because its
/// model queue was full (load shedding, as designed: not a failure).
const SHED: &str = "shed: refused at admission with RESOURCE_EXHAUSTED";

/// What [`raw`] reports for a call refused at admission with
/// RESOURCE_EXHAUSTED (no reply before the status); a code no server sends
/// on its own for these calls.
const SHED_CODE: Code = Code::Aborted;

/// What a good stream must give: the segments' times, and the finals' text.
#[derive(Debug, Clone, PartialEq)]
struct Outcome {
    segments: Vec<(u64, f64, f64)>,
    finals: Vec<String>,
}

fn outcome(messages: &[pb::ServerMessage]) -> Outcome {
    let mut o = Outcome {
        segments: Vec::new(),
        finals: Vec::new(),
    };
    for m in messages {
        match &m.msg {
            Some(pb::server_message::Msg::Segment(s))
                if s.kind == pb::segment::Kind::SpeechEnd as i32 =>
            {
                o.segments.push((s.segment_id, s.start_s, s.end_s))
            }
            Some(pb::server_message::Msg::Final(f)) => o.finals.push(f.text.clone()),
            _ => {}
        }
    }
    o
}

fn config(task: pb::Task, modalities: pb::Modalities) -> pb::StreamConfig {
    pb::StreamConfig {
        task: task as i32,
        modalities: modalities as i32,
        input: Some(pb::stream_config::Input::Container(
            pb::ContainerInput::default(),
        )),
        options: Some(pb::StreamOptions {
            stats_interval_ms: Some(1000),
            ..Default::default()
        }),
    }
}

fn config_msg(c: pb::StreamConfig) -> pb::ClientMessage {
    pb::ClientMessage {
        msg: Some(pb::client_message::Msg::Config(c)),
    }
}

fn media_msg(data: Vec<u8>, seq: u64) -> pb::ClientMessage {
    pb::ClientMessage {
        msg: Some(pb::client_message::Msg::Media(pb::MediaChunk { data, seq })),
    }
}

/// Runs one good stream; its outcome.
async fn good(
    url: &str,
    media: &Path,
    bytes: &[u8],
    task: pb::Task,
    modalities: pb::Modalities,
    live: bool,
) -> Result<Outcome, String> {
    let mut messages = Vec::new();
    let source = if live {
        Source::File(media.to_path_buf())
    } else {
        Source::Memory(bytes.to_vec())
    };
    client::stream(
        url,
        config(task, modalities),
        source,
        SendOptions {
            chunk_bytes: 8 * 1024,
            realtime: live,
            stop: None,
        },
        |m| messages.push(m.clone()),
    )
    .await
    .map_err(|e| match e {
        client::ClientError::Status(s)
            if s.code() == Code::ResourceExhausted && messages.is_empty() =>
        {
            SHED.to_string()
        }
        e => e.to_string(),
    })?;
    Ok(outcome(&messages))
}

/// Sends `messages` on a raw call (half-closing after them when `close`),
/// reads replies unless `read` is false, and returns the final status (or
/// `None` when the call was dropped by us after `hold`).
async fn raw(
    url: &str,
    messages: Vec<pb::ClientMessage>,
    close: bool,
    read: bool,
    hold: Duration,
) -> Result<Option<Code>, String> {
    let mut client = client::connect(url).await.map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel::<pb::ClientMessage>(4);
    let sender = tokio::spawn(async move {
        for m in messages {
            if tx.send(m).await.is_err() {
                return;
            }
        }
        if !close {
            // Keep the request side open until the call is dropped.
            tx.closed().await;
        }
    });
    let call = client.stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let result = tokio::time::timeout(hold, async {
        let mut inbound = match call.await {
            Ok(r) => r.into_inner(),
            Err(s) => return Some(s.code()),
        };
        if !read {
            std::future::pending::<()>().await;
        }
        let mut replies = 0;
        loop {
            match inbound.message().await {
                Ok(Some(_)) => replies += 1,
                Ok(None) => return Some(Code::Ok),
                // Refused before Ready: the model's queue was full.
                Err(s) if s.code() == Code::ResourceExhausted && replies == 0 => {
                    return Some(SHED_CODE)
                }
                Err(s) => return Some(s.code()),
            }
        }
    })
    .await;
    sender.abort();
    Ok(result.unwrap_or(None))
}

/// Plays one round of `behaviour`; `Ok(())` when it went as it must.
async fn round(
    behaviour: Behaviour,
    url: &str,
    config_: &ChaosConfig,
    bytes: &[u8],
    baseline: &Baselines,
    rng: &mut Rng,
) -> Result<(), String> {
    let chunks = |limit: usize| -> Vec<pb::ClientMessage> {
        bytes
            .chunks(16 * 1024)
            .take(limit)
            .enumerate()
            .map(|(i, c)| media_msg(c.to_vec(), i as u64))
            .collect()
    };
    let expect = |got: Option<Code>, want: Code| {
        if got == Some(want) {
            Ok(())
        } else {
            Err(format!("ended with {got:?}, expected {want:?}"))
        }
    };
    let idle = Duration::from_secs(config_.idle_timeout_s);
    match behaviour {
        Behaviour::LiveTranscribe | Behaviour::FastTranscribe => {
            let live = behaviour == Behaviour::LiveTranscribe;
            let got = good(
                url,
                &config_.media,
                bytes,
                pb::Task::Transcribe,
                pb::Modalities::Audio,
                live,
            )
            .await?;
            same(&got, &baseline.transcribe)
        }
        Behaviour::LiveSegments => {
            let got = good(
                url,
                &config_.media,
                bytes,
                pb::Task::Segments,
                pb::Modalities::Audio,
                true,
            )
            .await?;
            same(&got, &baseline.segments)
        }
        Behaviour::FastAudioVideo => {
            let got = good(
                url,
                &config_.media,
                bytes,
                pb::Task::Segments,
                pb::Modalities::AudioVideo,
                false,
            )
            .await?;
            same(&got, &baseline.segments)
        }
        Behaviour::Cancel => {
            // Dropped by us part way: no status to check; the server must
            // free the session (checked at the end).
            let hold = Duration::from_millis(200 + rng.below(2000));
            let mut m = vec![config_msg(config(
                pb::Task::Transcribe,
                pb::Modalities::Audio,
            ))];
            m.extend(chunks(usize::MAX));
            match raw(url, m, false, true, hold).await? {
                None | Some(Code::Ok) => Ok(()),
                Some(SHED_CODE) => Err(SHED.to_string()),
                Some(c) => Err(format!("a cancelled call ended with {c:?}")),
            }
        }
        Behaviour::StopsReading => {
            let mut m = vec![config_msg(config(
                pb::Task::Segments,
                pb::Modalities::Audio,
            ))];
            // Stats every millisecond of media: replies pile up unread.
            if let Some(pb::client_message::Msg::Config(c)) = &mut m[0].msg {
                c.options.as_mut().expect("options").stats_interval_ms = Some(1);
            }
            m.extend(chunks(usize::MAX));
            // Not read, so no status can be seen: the server must end it
            // after its idle timeout and free the slot (checked at the end).
            raw(url, m, false, false, idle + Duration::from_secs(2)).await?;
            Ok(())
        }
        Behaviour::HalfCloseEarly => {
            let mut m = vec![config_msg(config(
                pb::Task::Transcribe,
                pb::Modalities::Audio,
            ))];
            let n = bytes.len().div_ceil(16 * 1024);
            m.extend(chunks(1 + rng.below(n as u64) as usize));
            match raw(url, m, true, true, Duration::from_secs(600)).await? {
                Some(Code::Ok) => Ok(()),
                // Refused at admission: the model's queue was full.
                Some(SHED_CODE) => Err(SHED.to_string()),
                got => Err(format!("ended with {got:?}, expected Ok")),
            }
        }
        Behaviour::Garbage => {
            let mut junk = vec![0u8; 64 * 1024];
            for b in junk.iter_mut() {
                *b = rng.next() as u8;
            }
            let m = vec![
                config_msg(config(pb::Task::Segments, pb::Modalities::Audio)),
                media_msg(junk, 0),
            ];
            expect(
                raw(url, m, true, true, Duration::from_secs(60)).await?,
                Code::InvalidArgument,
            )
        }
        Behaviour::Oversized => {
            let m = vec![
                config_msg(config(pb::Task::Segments, pb::Modalities::Audio)),
                media_msg(vec![0u8; config_.max_message_bytes + 1024], 0),
            ];
            expect(
                raw(url, m, true, true, Duration::from_secs(60)).await?,
                Code::ResourceExhausted,
            )
        }
        Behaviour::SequenceGap => {
            let mut m = vec![config_msg(config(
                pb::Task::Segments,
                pb::Modalities::Audio,
            ))];
            let mut c = chunks(6);
            let skip = 1 + rng.below(4) as usize;
            c.remove(skip.min(c.len() - 1));
            m.extend(c);
            expect(
                raw(url, m, true, true, Duration::from_secs(60)).await?,
                Code::DataLoss,
            )
        }
        Behaviour::NoConfig => expect(
            raw(url, Vec::new(), false, true, idle + Duration::from_secs(10)).await?,
            Code::DeadlineExceeded,
        ),
    }
}

fn same(got: &Outcome, want: &Outcome) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("got {got:?}, alone it gave {want:?}"))
    }
}

struct Baselines {
    transcribe: Outcome,
    segments: Outcome,
}

/// Runs the chaos test.
pub async fn run(config: ChaosConfig) -> anyhow::Result<ChaosReport> {
    let bytes = Arc::new(
        std::fs::read(&config.media)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", config.media.display()))?,
    );
    let server = start_server(&config)?;
    let pid = server.child.id();
    let url = server.url.clone();
    // Each good stream alone first: what every concurrent run must match.
    let alone = |task, modalities| good(&url, &config.media, &bytes, task, modalities, false);
    let baseline = Arc::new(Baselines {
        transcribe: alone(pb::Task::Transcribe, pb::Modalities::Audio)
            .await
            .map_err(|e| anyhow::anyhow!("transcription alone failed: {e}"))?,
        segments: alone(pb::Task::Segments, pb::Modalities::Audio)
            .await
            .map_err(|e| anyhow::anyhow!("segments alone failed: {e}"))?,
    });
    let av = alone(pb::Task::Segments, pb::Modalities::AudioVideo)
        .await
        .map_err(|e| anyhow::anyhow!("audio+video alone failed: {e}"))?;
    anyhow::ensure!(
        av == baseline.segments,
        "audio+video segments differ from audio-only ones alone: {av:?} vs {:?}",
        baseline.segments
    );
    // Let the threads of the warm-up settle (the blocking pool keeps idle
    // threads 10 s).
    tokio::time::sleep(Duration::from_secs(12)).await;
    let mut report = ChaosReport {
        before: sample(pid),
        ..Default::default()
    };

    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(Mutex::new(report.before));
    let active_peak = Arc::new(Mutex::new(0u32));
    let info_latency = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let (stop, peak, active_peak, info_latency, url) = (
            stop.clone(),
            peak.clone(),
            active_peak.clone(),
            info_latency.clone(),
            url.clone(),
        );
        tokio::spawn(async move {
            let mut info = client::connect(&url).await.ok();
            while !stop.load(Ordering::Relaxed) {
                let s = sample(pid);
                {
                    let mut p = peak.lock().expect("peak");
                    p.rss_bytes = p.rss_bytes.max(s.rss_bytes);
                    p.threads = p.threads.max(s.threads);
                    p.fds = p.fds.max(s.fds);
                }
                if let Some(c) = info.as_mut() {
                    let asked = Instant::now();
                    let answer = c.get_info(pb::GetInfoRequest {}).await;
                    info_latency.lock().expect("latency").push(asked.elapsed());
                    if let Ok(r) = answer {
                        let mut a = active_peak.lock().expect("active");
                        *a = (*a).max(r.into_inner().active_sessions);
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let tallies = Arc::new(Mutex::new(BTreeMap::<Behaviour, Tally>::new()));
    let mut clients = Vec::new();
    for k in 0..config.clients {
        let (url, bytes, baseline, tallies, config) = (
            url.clone(),
            bytes.clone(),
            baseline.clone(),
            tallies.clone(),
            config.clone(),
        );
        let deadline = started + config.duration;
        clients.push(tokio::spawn(async move {
            let mut rng = Rng(config.seed ^ (k as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
            // The first rounds go through every behaviour in turn, so even
            // a short run plays each; then the mix is drawn at random.
            let mut turn = k;
            while Instant::now() < deadline {
                let b = if turn < BEHAVIOURS.len() {
                    BEHAVIOURS[turn].0
                } else {
                    rng.pick()
                };
                turn += config.clients;
                let result = round(b, &url, &config, &bytes, &baseline, &mut rng).await;
                let mut t = tallies.lock().expect("tallies");
                let t = t.entry(b).or_default();
                t.rounds += 1;
                match result {
                    Ok(()) => t.as_expected += 1,
                    Err(e) if e == SHED => {
                        t.as_expected += 1;
                        t.shed += 1;
                    }
                    Err(e) => {
                        if t.failures.len() < 10 {
                            t.failures.push(e)
                        }
                    }
                }
            }
        }));
    }
    for c in clients {
        c.await?;
    }
    report.wall = started.elapsed();
    // Settle: sessions of dropped and unread calls end within the idle
    // timeout; the blocking pool's idle threads leave after 10 s.
    let mut info = client::connect(&url).await?;
    let settle = Instant::now();
    loop {
        report.active_after = info
            .get_info(pb::GetInfoRequest {})
            .await?
            .into_inner()
            .active_sessions;
        if report.active_after == 0 || settle.elapsed() > Duration::from_secs(60) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(info);
    tokio::time::sleep(Duration::from_secs(12)).await;
    stop.store(true, Ordering::Relaxed);
    sampler.await?;
    report.after = sample(pid);
    report.peak = *peak.lock().expect("peak");
    report.active_peak = *active_peak.lock().expect("active");
    report.info_latency = std::mem::take(&mut *info_latency.lock().expect("latency"));
    report.tallies = std::mem::take(&mut *tallies.lock().expect("tallies"));
    drop(server);
    Ok(report)
}
