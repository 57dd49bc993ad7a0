//! The engine's scheduler: utterances handed in together decode together
//! (the live rows of all of them in one step, each at its own position) and
//! give exactly what each gives alone; finals and partials with their own
//! widths and forced prefixes; a request nobody waits for leaves unanswered.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use avlm_stream::bundle::LoadedBundle;
use avlm_stream::engine::{AsrPipeline, Engine, EngineError, Request, Transcript};
use common::{quick_bundle, read_wav};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn init() {
    avlm_encoders::runtime::init(&root().join(".avlm").join(avlm_stream::config::ORT_LIB)).unwrap();
}

fn card(n: u32) -> Vec<f32> {
    read_wav(&format!(
        "/usr/share/pocketsphinx/test/data/cards/{n:03}.wav"
    ))
}

type Answer = Result<Transcript, EngineError>;

/// Session numbers of the requests made here.
static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn request(samples: Vec<f32>, forced: &str, partial: bool) -> (Request, Receiver<Answer>) {
    let (tx, rx) = channel();
    let r = Request {
        video: None,
        samples,
        forced: forced.to_string(),
        session: NEXT.fetch_add(1, Ordering::Relaxed),
        partial,
        cancelled: Arc::new(|| false),
        reply: Box::new(move |a| {
            let _ = tx.send(a);
        }),
    };
    (r, rx)
}

fn same(a: &Transcript, b: &Transcript) -> bool {
    (&a.text, &a.tokens, a.audio_tokens, a.prompt_tokens)
        == (&b.text, &b.tokens, b.audio_tokens, b.prompt_tokens)
}

#[test]
fn utterances_handed_in_together_step_together_and_match_one_at_a_time() {
    init();
    let dir = quick_bundle("scheduler-together");
    // Different lengths, so rows sit at different positions; one forced
    // prefix; one partial (width 1) among finals (width 4).
    let jobs: Vec<(Vec<f32>, &str, bool)> = vec![
        (card(1), "", false),
        (card(2), "", false),
        (card(3)[..16_000].to_vec(), "", false),
        (card(4), "ten", false),
        (card(5), "", true),
    ];
    let mut pipeline = AsrPipeline::new(LoadedBundle::load(&dir, 1).unwrap()).unwrap();
    let expected: Vec<Transcript> = jobs
        .iter()
        .map(|(samples, forced, partial)| {
            let forced = pipeline.encode_answer(forced).unwrap();
            if *partial {
                pipeline.transcribe_partial(samples, &forced).unwrap()
            } else {
                pipeline.transcribe_with(samples, &forced).unwrap()
            }
        })
        .collect();
    let width = pipeline.bundle().manifest.decoding.beam_width as u64;
    drop(pipeline);

    let engine = Engine::start(&dir, 1).unwrap();
    let answers: Vec<Receiver<Answer>> = jobs
        .into_iter()
        .map(|(samples, forced, partial)| {
            let (r, rx) = request(samples, forced, partial);
            engine.try_submit(r).unwrap();
            rx
        })
        .collect();
    for (i, (rx, want)) in answers.iter().zip(&expected).enumerate() {
        let got = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("request {i}: {e}"))
            .unwrap();
        assert!(same(&got, want), "request {i}: {got:?}\nalone: {want:?}");
    }
    assert!(!expected[3].text.is_empty() && expected[3].text.starts_with("ten"));
    let load = engine.load();
    // Rows of several utterances ran in one step: more than one beam search holds.
    assert!(
        load.max_rows.load(Ordering::Relaxed) > width,
        "at most {} rows in a step",
        load.max_rows.load(Ordering::Relaxed)
    );
    assert_eq!(load.in_flight.load(Ordering::Acquire), 0);
}

#[test]
fn a_request_nobody_waits_for_leaves_without_an_answer() {
    init();
    let dir = quick_bundle("scheduler-cancel");
    let engine = Engine::start(&dir, 1).unwrap();
    let gone = Arc::new(AtomicBool::new(false));
    let (tx, cancelled_rx) = channel::<Answer>();
    let flag = gone.clone();
    let long: Vec<f32> = (1..=5).flat_map(card).collect();
    engine
        .try_submit(Request {
            video: None,
            samples: long,
            forced: String::new(),
            session: 0,
            partial: false,
            cancelled: Arc::new(move || flag.load(Ordering::Acquire)),
            reply: Box::new(move |a| {
                let _ = tx.send(a);
            }),
        })
        .unwrap();
    gone.store(true, Ordering::Release);
    // The next request is answered; the cancelled one never is.
    let (r, rx) = request(card(2), "", false);
    engine.try_submit(r).unwrap();
    let t = rx.recv_timeout(Duration::from_secs(120)).unwrap().unwrap();
    assert!(!t.text.is_empty());
    assert!(cancelled_rx
        .recv_timeout(Duration::from_millis(200))
        .is_err());
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.load().in_flight.load(Ordering::Acquire) != 0 {
        assert!(
            Instant::now() < deadline,
            "the cancelled request is still counted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A prompt prefilled a few positions at a time (as a busy tick's leftover
/// budget allows) runs to exactly the numbers it runs to in one go: its
/// chunks start at fixed positions whatever the budget. Under load the
/// budget varies from tick to tick, and transcripts used to change with it.
#[test]
fn a_prompt_runs_to_the_same_numbers_whatever_the_prefill_budget() {
    init();
    let dir = quick_bundle("scheduler-budget");
    let mut pipeline = AsrPipeline::new(LoadedBundle::load(&dir, 1).unwrap()).unwrap();
    for n in [1, 2, 4] {
        let samples = card(n);
        let mut whole = pipeline.begin(&samples, &[], false).unwrap();
        pipeline.prefill(&mut whole, usize::MAX).unwrap();
        assert_eq!(whole.prefill_left(), 0);
        let want = whole.prompt_digest().expect("the prompt is in");
        for budgets in [vec![1], vec![3, 7, 64], vec![5, 100, 2, 250], vec![64]] {
            let mut d = pipeline.begin(&samples, &[], false).unwrap();
            let mut turn = 0;
            while d.prefill_left() > 0 {
                let ran = pipeline
                    .prefill(&mut d, budgets[turn % budgets.len()])
                    .unwrap();
                assert!(ran > 0);
                turn += 1;
            }
            assert_eq!(
                d.prompt_digest(),
                Some(want),
                "card {n}, budgets {budgets:?}: the prompt's logits differ from one go"
            );
        }
    }
}
