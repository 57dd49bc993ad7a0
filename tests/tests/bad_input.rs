//! Bad input ends only that stream, with the right status and a message that
//! says what was wrong; the server goes on serving others.

mod common;

use avlm_proto as pb;
use common::*;
use tonic::Code;

async fn expect_failure(url: &str, messages: Vec<pb::ClientMessage>, code: Code, needle: &str) {
    let (_, status) = raw_call(url, messages).await;
    let status = status.expect_err("the stream must fail");
    assert_eq!(
        status.code(),
        code,
        "wrong code; message: {}",
        status.message()
    );
    assert!(
        status
            .message()
            .to_lowercase()
            .contains(&needle.to_lowercase()),
        "message {:?} does not mention {needle:?}",
        status.message()
    );
    assert_server_still_serves(url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_before_config_is_invalid_argument() {
    let server = start_server(server_config()).await;
    expect_failure(
        &server.url(),
        vec![media_msg(b"abc", 0)],
        Code::InvalidArgument,
        "before the StreamConfig",
    )
    .await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_config_is_invalid_argument() {
    let server = start_server(server_config()).await;
    let webm = read_media("speech.webm");
    let messages = vec![
        config_msg(container_config()),
        media_msg(&webm[..1000], 0),
        config_msg(container_config()),
    ];
    expect_failure(
        &server.url(),
        messages,
        Code::InvalidArgument,
        "second StreamConfig",
    )
    .await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_bytes_are_invalid_argument_with_ffmpegs_reason() {
    let server = start_server(server_config()).await;
    // Deterministic noise that is no container at all.
    let mut x = 0x1234_5678u32;
    let junk: Vec<u8> = (0..200_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect();
    let (_, status) = raw_call(&server.url(), whole_stream(container_config(), &junk, 4096)).await;
    let status = status.expect_err("junk must fail");
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(
        status.message().contains("FFmpeg") || status.message().contains("no audio stream"),
        "{}",
        status.message()
    );
    assert_server_still_serves(&server.url()).await;

    // A real WebM whose middle is overwritten with junk: demuxing must fail
    // or decoding must survive, never hang.
    let mut webm = read_media("speech.webm");
    let n = webm.len();
    webm.truncate(n / 3);
    webm.extend(junk.iter().take(50_000));
    let (_, status) = raw_call(&server.url(), whole_stream(container_config(), &webm, 4096)).await;
    if let Err(s) = status {
        assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
    }
    assert_server_still_serves(&server.url()).await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_video_is_invalid_argument() {
    let server = start_server(server_config()).await;
    let mut config = container_config();
    config.modalities = pb::Modalities::AudioVideo as i32;
    expect_failure(
        &server.url(),
        whole_stream(config, &read_media("speech.ogg"), 4096),
        Code::InvalidArgument,
        "no video stream",
    )
    .await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mp4_with_index_at_end_is_failed_precondition() {
    let server = start_server(server_config()).await;
    expect_failure(
        &server.url(),
        whole_stream(container_config(), &read_media("speech.plain.mp4"), 4096),
        Code::FailedPrecondition,
        "fragmented",
    )
    .await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seq_gap_is_data_loss_and_repeat_is_invalid_argument() {
    let server = start_server(server_config()).await;
    let webm = read_media("speech.webm");
    let gap = vec![
        config_msg(container_config()),
        media_msg(&webm[..100], 0),
        media_msg(&webm[100..200], 2),
    ];
    expect_failure(&server.url(), gap, Code::DataLoss, "missing").await;
    let repeat = vec![
        config_msg(container_config()),
        media_msg(&webm[..100], 0),
        media_msg(&webm[..100], 0),
    ];
    expect_failure(&server.url(), repeat, Code::InvalidArgument, "repeats").await;
    let late = vec![config_msg(container_config()), media_msg(&webm[..100], 1)];
    expect_failure(&server.url(), late, Code::DataLoss, "missing").await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_values_name_the_field() {
    let server = start_server(server_config()).await;
    let mut config = container_config();
    config.options.as_mut().unwrap().min_silence_ms = Some(5);
    expect_failure(
        &server.url(),
        vec![config_msg(config)],
        Code::InvalidArgument,
        "min_silence_ms",
    )
    .await;
    let mut config = container_config();
    config.input = Some(pb::stream_config::Input::RawPcm(pb::RawPcmInput {
        sample_format: pb::SampleFormat::S16le as i32,
        sample_rate: 16_000,
        channels: 6,
    }));
    expect_failure(
        &server.url(),
        vec![config_msg(config)],
        Code::InvalidArgument,
        "channels",
    )
    .await;
    let mut config = container_config();
    config.modalities = pb::Modalities::AudioVideo as i32;
    config.options.as_mut().unwrap().video_width = Some(4096);
    expect_failure(
        &server.url(),
        vec![config_msg(config)],
        Code::InvalidArgument,
        "video_width",
    )
    .await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_is_resource_exhausted() {
    let mut config = server_config();
    config.max_message_bytes = 64 * 1024;
    let server = start_server(config).await;
    let webm = read_media("speech.webm");
    let messages = vec![
        config_msg(container_config()),
        media_msg(&webm[..100_000], 0),
    ];
    expect_failure(&server.url(), messages, Code::ResourceExhausted, "limit").await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_after_end_of_stream_is_invalid_argument() {
    let server = start_server(server_config()).await;
    let ogg = read_media("speech.ogg");
    let messages = vec![
        config_msg(container_config()),
        media_msg(&ogg[..1000], 0),
        control_msg(pb::control::Action::EndOfStream),
        media_msg(&ogg[1000..2000], 1),
    ];
    expect_failure(
        &server.url(),
        messages,
        Code::InvalidArgument,
        "after END_OF_STREAM",
    )
    .await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_stream_ends_ok_with_stats() {
    let server = start_server(server_config()).await;
    let (got, status) = raw_call(
        &server.url(),
        vec![
            config_msg(container_config()),
            control_msg(pb::control::Action::EndOfStream),
        ],
    )
    .await;
    // No media at all is not an error: the stream ends OK with final stats.
    status.expect("an empty stream ends OK");
    let run = Run { messages: got };
    assert!(run.segments().is_empty());
    assert_eq!(run.last_stats().expect("final stats").bytes_received, 0);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_jump_in_audio_timestamps_is_invalid_argument() {
    let server = start_server(server_config()).await;
    expect_failure(
        &server.url(),
        whole_stream(container_config(), &read_media("timestamp_jump.webm"), 4096),
        Code::InvalidArgument,
        "jump forward",
    )
    .await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nan_samples_in_float_pcm_do_not_break_voice_activity() {
    let server = start_server(server_config()).await;
    let pcm16 = read_media("speech.s16le");
    let mut bytes = Vec::with_capacity(pcm16.len() * 2);
    for (i, s) in pcm16.chunks_exact(2).enumerate() {
        let v = f32::from(i16::from_le_bytes([s[0], s[1]])) / 32768.0;
        // NaN and infinities sprinkled through the first (silent) 0.5 s.
        let v = match i {
            100..=199 => f32::NAN,
            300 => f32::INFINITY,
            _ => v,
        };
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    let mut config = container_config();
    config.input = Some(pb::stream_config::Input::RawPcm(pb::RawPcmInput {
        sample_format: pb::SampleFormat::F32le as i32,
        sample_rate: 16_000,
        channels: 1,
    }));
    let run = stream_bytes(&server.url(), config, bytes, 8192)
        .await
        .unwrap();
    assert_eq!(
        run.segments().len(),
        manifest().speech.len(),
        "{:?}",
        run.segments()
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_of_stream_ends_the_call_even_if_the_client_keeps_its_side_open() {
    let server = start_server(server_config()).await;
    let mut client = avlm_stream::client::connect(&server.url()).await.unwrap();
    let media = whole_stream(container_config(), &read_media("short.webm"), 4096);
    // `tx` stays alive: no half-close.
    let (tx, mut inbound) = open_stream(&mut client, media, 8).await;
    let ended = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        let mut n = 0;
        while let Some(_m) = inbound.message().await.expect("ends with OK") {
            n += 1;
        }
        n
    })
    .await
    .expect("the server must end the call after END_OF_STREAM");
    assert!(ended >= 2);
    drop(tx);
    server.shutdown().await.unwrap();
}

/// Sends message bodies as given: what a client built from another schema,
/// or a broken one, puts on the wire.
#[derive(Debug, Default, Clone)]
struct RawCodec;

#[derive(Debug)]
struct RawBytes;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawBytes;
    type Decoder = RawBytes;

    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }

    fn decoder(&mut self) -> RawBytes {
        RawBytes
    }
}

impl tonic::codec::Encoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_is_no_valid_protobuf_is_invalid_argument() {
    let server = start_server(server_config()).await;
    let url = server.url();
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    // Field 1 as a length-delimited value longer than the message.
    let garbage = vec![0x0a, 0x7f, 0x01, 0x02];
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let unary = grpc
        .unary(
            tonic::Request::new(garbage.clone()),
            "/avlm.v1.Avlm/GetInfo".parse().unwrap(),
            RawCodec,
        )
        .await
        .expect_err("GetInfo with an undecodable request");
    assert_eq!(unary.code(), Code::InvalidArgument, "{}", unary.message());
    assert!(
        unary
            .message()
            .contains("not a valid avlm.v1.GetInfoRequest"),
        "{}",
        unary.message()
    );
    // A valid config first, then a broken message: the stream ends with the same code.
    let config = pb::ClientMessage {
        msg: Some(pb::client_message::Msg::Config(container_config())),
    };
    let messages = vec![prost::Message::encode_to_vec(&config), garbage];
    grpc.ready().await.unwrap();
    let status = match grpc
        .streaming(
            tonic::Request::new(tokio_stream::iter(messages)),
            "/avlm.v1.Avlm/Stream".parse().unwrap(),
            RawCodec,
        )
        .await
    {
        Err(status) => status,
        Ok(response) => {
            let mut replies = response.into_inner();
            loop {
                match replies.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("the stream ended OK after an undecodable message"),
                    Err(status) => break status,
                }
            }
        }
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(
        status
            .message()
            .contains("not a valid avlm.v1.ClientMessage"),
        "{}",
        status.message()
    );
    assert_server_still_serves(&url).await;
    server.shutdown().await.unwrap();
}
