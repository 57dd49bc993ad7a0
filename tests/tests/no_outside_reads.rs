//! A client's bytes are the only media a session reads: FFmpeg demuxers that
//! open what a file names (DASH and HLS manifests, ffconcat scripts, SDP
//! descriptions) are refused, probed or hinted, with INVALID_ARGUMENT, and
//! nothing of the named media comes back.

mod common;

use avlm_proto as pb;
use common::*;
use tonic::Code;

async fn refused(url: &str, config: pb::StreamConfig, bytes: &[u8], needle: &str) {
    let (messages, status) = raw_call(url, whole_stream(config, bytes, 4096)).await;
    let status = status.expect_err("the stream must fail");
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(
        status.message().contains(needle),
        "message {:?} does not mention {needle:?}",
        status.message()
    );
    let segments = messages
        .iter()
        .filter(|m| matches!(m.msg, Some(pb::server_message::Msg::Segment(_))))
        .count();
    assert_eq!(
        segments, 0,
        "media named by the file was read: {messages:?}"
    );
    assert_server_still_serves(url).await;
}

/// A DASH manifest whose only representation is a file on the server.
fn dash_manifest() -> Vec<u8> {
    let target = media("speech.fast.mp4");
    format!(
        r#"<?xml version="1.0"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" mediaPresentationDuration="PT15S"
     minBufferTime="PT2S" profiles="urn:mpeg:dash:profile:isoff-on-demand:2011">
 <Period><AdaptationSet mimeType="audio/mp4"><Representation id="a" bandwidth="64000" codecs="mp4a.40.2">
  <BaseURL>{}</BaseURL>
 </Representation></AdaptationSet></Period></MPD>
"#,
        target.display()
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_and_scripts_naming_other_media_are_refused() {
    let server = start_server(server_config()).await;
    let url = server.url();
    // The refusal names what FFmpeg took the bytes for.
    let why = |name: &str| format!("({name}), which this server does not read");
    refused(&url, container_config(), &dash_manifest(), &why("dash")).await;
    // ffconcat opens paths relative to the server's working directory.
    let concat = format!(
        "ffconcat version 1.0\nfile '{}'\n",
        media("speech.webm").display()
    );
    refused(&url, container_config(), concat.as_bytes(), &why("concat")).await;
    // An SDP description would make the server listen for RTP on a UDP port.
    let sdp = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
               m=audio 50990 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
    refused(&url, container_config(), sdp.as_bytes(), &why("sdp")).await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_hint_may_not_name_such_a_demuxer() {
    let server = start_server(server_config()).await;
    for hint in ["dash", "concat", "sdp", "hls", "image2", "lavfi"] {
        refused(
            &server.url(),
            with_hint(hint),
            &dash_manifest(),
            "not a demuxer this server reads client media with",
        )
        .await;
    }
    // A hint that names an accepted demuxer still works.
    let run = stream_bytes(
        &server.url(),
        with_hint("webm"),
        read_media("speech.webm"),
        8192,
    )
    .await
    .expect("a webm hint is accepted");
    assert_matches_speech(&run.segments(), 0.1, "webm hinted");
    server.shutdown().await.unwrap();
}
