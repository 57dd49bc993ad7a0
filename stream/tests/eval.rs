//! `avlm eval lrs3` end to end on a small synthetic set in the LRS3 layout
//! (tools/make_lrs3_sets.py): clip count, outputs written, the same WER on
//! two runs, a valid PNG plot, and the same hypotheses in process and over
//! gRPC.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod common;
use common::quick_bundle;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn set() -> PathBuf {
    let p = root().join("tests/media/generated/lrs3/synthetic_ci");
    assert!(
        p.is_dir(),
        "{} missing: run `bash tools/test.sh`",
        p.display()
    );
    p
}

fn avlm() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_avlm"));
    c.current_dir(root()).env("AVLM_LOG", "error");
    c
}

fn eval(bundle: &Path, out: &Path, extra: &[&str]) -> (String, serde_json::Value) {
    let output = avlm()
        .args(["eval", "lrs3"])
        .arg(set())
        .args(["--limit", "3", "--snr", "0,clean", "--bundle"])
        .arg(bundle)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "eval failed: {stderr}");
    let summary =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    (stderr, summary)
}

fn hypotheses(out: &Path) -> Vec<(String, String, String)> {
    std::fs::read_to_string(out.join("clips.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["id"].as_str().unwrap().to_string(),
                v["condition"].as_str().unwrap().to_string(),
                v["hypothesis"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn eval_counts_clips_writes_outputs_and_is_deterministic_in_process_and_over_grpc() {
    let bundle = quick_bundle("eval-bundle");
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let (out1, out2, out3) = (
        tmp.join("eval-1"),
        tmp.join("eval-2"),
        tmp.join("eval-grpc"),
    );

    let (stderr, s1) = eval(&bundle, &out1, &[]);
    assert!(stderr.contains("found 6 clips"), "{stderr}");
    assert_eq!(s1["clips"], 3);
    assert_eq!(s1["conditions"].as_array().unwrap().len(), 2);
    assert!(s1["wer"].as_f64().unwrap() >= 0.0 && s1["cer"].as_f64().unwrap() >= 0.0);
    assert_eq!(s1["wer_condition"], "clean");
    for f in ["clips.csv", "clips.jsonl", "summary.json", "wer_vs_snr.png"] {
        assert!(out1.join(f).is_file(), "{f} missing");
    }
    assert_eq!(
        std::fs::read_to_string(out1.join("clips.csv"))
            .unwrap()
            .lines()
            .count(),
        1 + 6
    );
    let png = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(out1.join("wer_vs_snr.png")).unwrap(),
    ));
    let reader = png.read_info().expect("a valid PNG");
    assert_eq!((reader.info().width, reader.info().height), (640, 420));

    let (_, s2) = eval(&bundle, &out2, &[]);
    assert_eq!(s1["conditions"][0]["wer"], s2["conditions"][0]["wer"]);
    assert_eq!(s1["conditions"][1]["wer"], s2["conditions"][1]["wer"]);
    assert_eq!(hypotheses(&out1), hypotheses(&out2));

    // The same through a server.
    let mut server = avlm()
        .args(["serve", "--listen", "127.0.0.1:0", "--bundle"])
        .arg(&bundle)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stderr.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("server URL")
        .to_string();
    let (_, s3) = eval(&bundle, &out3, &["--server", &url]);
    server.kill().unwrap();
    server.wait().unwrap();
    assert_eq!(
        hypotheses(&out1),
        hypotheses(&out3),
        "gRPC and in-process hypotheses differ"
    );
    assert_eq!(s1["conditions"][1]["wer"], s3["conditions"][1]["wer"]);
}

#[test]
fn video_modalities_are_refused_with_a_reason() {
    let out = avlm()
        .args(["eval", "lrs3"])
        .arg(set())
        .args(["--modality", "av"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lip encoder"));
}
