//! The manifest format of the projector config.

use avlm_projector::{Activation, Compression, ProjectorConfig};

#[test]
fn compression_serde_is_tagged_by_kind() {
    let c: Compression = serde_json::from_str(r#"{"kind":"stack","k":4}"#).expect("parse");
    assert_eq!(c, Compression::Stack { k: 4 });
    let c: Compression = serde_json::from_str(r#"{"kind":"pool","k":2}"#).expect("parse");
    assert_eq!(c, Compression::Pool { k: 2 });
    let json = serde_json::to_string(&Compression::Stack { k: 4 }).expect("write");
    assert_eq!(json, r#"{"kind":"stack","k":4}"#);
}

#[test]
fn full_config_parses_and_rejects_unknown_fields() {
    let text = r#"{"compression":{"kind":"stack","k":2},"activation":"gelu",
        "input_dim":1024,"hidden_dim":2048,"output_dim":4096}"#;
    let c: ProjectorConfig = serde_json::from_str(text).expect("parse");
    assert_eq!(c.activation, Activation::Gelu);
    assert!(!c.layer_norm, "layer_norm defaults to off");
    assert_eq!(c.fc1_in_dim(), 2048);
    let typo = text.replace("hidden_dim", "hiden_dim");
    assert!(serde_json::from_str::<ProjectorConfig>(&typo).is_err());
}

#[test]
fn validate_rejects_zero_and_overflowing_widths() {
    let ok = ProjectorConfig {
        compression: Compression::Stack { k: 4 },
        activation: Activation::Relu,
        layer_norm: false,
        input_dim: 1024,
        layers: 2,
        hidden_dim: 2048,
        output_dim: 4096,
    };
    assert!(ok.validate().is_ok());
    let zero_hidden = ProjectorConfig {
        hidden_dim: 0,
        ..ok.clone()
    };
    assert!(zero_hidden.validate().is_err());
    let zero_k = ProjectorConfig {
        compression: Compression::Pool { k: 0 },
        ..ok.clone()
    };
    assert!(zero_k.validate().is_err());
    let huge = ProjectorConfig {
        input_dim: usize::MAX,
        ..ok
    };
    assert!(huge.validate().is_err());
}
