//! The default bundle's joint CTC/attention decoding through the TRANSCRIBE
//! pipeline, and the manifest checks around it.

mod common;

use std::path::{Path, PathBuf};

use avlm_stream::bundle::LoadedBundle;
use avlm_stream::engine::{AsrPipeline, Transcript};
use common::{quick_bundle, read_wav};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn init() {
    avlm_encoders::runtime::init(&root().join(".avlm").join(avlm_stream::config::ORT_LIB)).unwrap();
}

/// The quick bundle (default, 6 new tokens) with `edit` applied to its manifest.
fn variant(name: &str, edit: impl Fn(String) -> String) -> PathBuf {
    let dir = quick_bundle(name);
    let manifest = std::fs::read_to_string(dir.join("avlm.toml")).unwrap();
    std::fs::write(dir.join("avlm.toml"), edit(manifest)).unwrap();
    dir
}

/// `manifest` with the value of the line starting with `key` replaced.
fn set_line(manifest: &str, key: &str, value: &str) -> String {
    let start = manifest
        .find(key)
        .unwrap_or_else(|| panic!("no {key:?} line"));
    let end = start + manifest[start..].find('\n').unwrap();
    format!("{}{key}{value}{}", &manifest[..start], &manifest[end..])
}

fn load_err(dir: &Path) -> String {
    match LoadedBundle::load(dir, 1) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_default_bundle_decodes_jointly_and_partials_use_their_own_width() {
    init();
    let dir = quick_bundle("joint-default");
    let bundle = LoadedBundle::load(&dir, 1).unwrap();
    assert!(
        bundle.ctc.is_some(),
        "the default bundle ships a CTC head and a CTC weight above 0"
    );
    assert!(bundle.summary().contains("joint CTC/attention"));
    let mut pipeline = AsrPipeline::new(bundle).unwrap();
    let samples = read_wav("/usr/share/pocketsphinx/test/data/cards/001.wav");
    let a = pipeline.transcribe(&samples).unwrap();
    let b = pipeline.transcribe(&samples).unwrap();
    assert!(!a.text.is_empty());
    assert_eq!(
        a,
        Transcript {
            times: a.times,
            ..b
        },
        "joint decoding is deterministic"
    );
    // A forced prefix is kept, and the CTC head follows it.
    let forced = pipeline.encode_answer("ten").unwrap();
    let f = pipeline.transcribe_with(&samples, &forced).unwrap();
    assert!(f.tokens.starts_with(&forced), "{:?}", f.tokens);
    assert!(f.text.starts_with("ten"), "{:?}", f.text);
    let p = pipeline.transcribe_partial(&samples, &[]).unwrap();
    assert!(!p.text.is_empty());
    // Partials are decoded on from committed words too.
    let p = pipeline.transcribe_partial(&samples, &forced).unwrap();
    assert!(p.tokens.starts_with(&forced), "{:?}", p.tokens);
    assert!(p.text.starts_with("ten"), "{:?}", p.text);
}

#[test]
fn joint_decoding_settings_are_checked_at_load() {
    init();
    let no_head = variant("joint-no-head", |m| {
        m.replace("ctc_head = \"", "# ctc_head = \"")
    });
    assert!(
        load_err(&no_head).contains("needs decoding.ctc_head"),
        "{}",
        load_err(&no_head)
    );
    let weight = variant("joint-weight", |m| set_line(&m, "ctc_weight = ", "1.5"));
    assert!(
        load_err(&weight).contains("[0, 1]"),
        "{}",
        load_err(&weight)
    );
    let partial = variant("joint-partial", |m| {
        m.replace("[decoding]\n", "[decoding]\npartial_beam_width = 0\n")
    });
    assert!(
        load_err(&partial).contains("partial_beam_width"),
        "{}",
        load_err(&partial)
    );
    // A head of the wrong width: the projector's weights are no CTC head.
    let lora = root().join(".avlm/bundles/default/lora.safetensors");
    let wrong = variant("joint-wrong-head", |m| {
        set_line(&m, "ctc_head = ", &format!("\"{}\"", lora.display()))
    });
    let err = load_err(&wrong);
    assert!(
        err.contains("lora.safetensors") && err.contains("ctc.blank_w missing"),
        "{err}"
    );
    // Weight 0: the head is not even loaded.
    let off = variant("joint-off", |m| set_line(&m, "ctc_weight = ", "0.0"));
    assert!(LoadedBundle::load(&off, 1).unwrap().ctc.is_none());
}
