//! Running avlm in production: TLS (certificates made here), bearer tokens
//! on every service, health NOT_SERVING until the models load, and server
//! reflection v1 and v1alpha (Python's grpcio-reflection client).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use avlm_proto as pb;
use avlm_stream::client::{ClientError, Target};
use avlm_stream::server::{Auth, OpenService, RunningServer, TlsFiles, Transport};
use common::*;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// A CA, a server certificate for localhost signed by it, and a client
/// certificate signed by it, written as PEM files in a fresh folder.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn make(name: &str) -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair,
        };
        let dir = std::env::temp_dir().join(format!("avlm-pki-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "avlm test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        for (who, names, usage) in [
            (
                "server",
                vec!["localhost".to_string(), "127.0.0.1".to_string()],
                ExtendedKeyUsagePurpose::ServerAuth,
            ),
            (
                "client",
                vec!["client.avlm.test".to_string()],
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
        ] {
            let mut params = CertificateParams::new(names).unwrap();
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &ca).unwrap();
            std::fs::write(dir.join(format!("{who}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{who}.key")), key.serialize_pem()).unwrap();
        }
        // A second CA nobody trusts, for a client certificate the server must refuse.
        let mut other = CertificateParams::new(Vec::<String>::new()).unwrap();
        other.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let other = CertifiedIssuer::self_signed(other, KeyPair::generate().unwrap()).unwrap();
        let mut params = CertificateParams::new(vec!["intruder.test".to_string()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &other).unwrap();
        std::fs::write(dir.join("intruder.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("intruder.key"), key.serialize_pem()).unwrap();
        Pki { dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    fn server_tls(&self, client_ca: bool) -> TlsFiles {
        TlsFiles {
            cert: self.path("server.pem"),
            key: self.path("server.key"),
            client_ca: client_ca.then(|| self.path("ca.pem")),
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start(transport: Transport) -> RunningServer {
    avlm_stream::server::start_with(server_config(), "127.0.0.1:0".parse().unwrap(), transport)
        .await
        .expect("server starts")
}

async fn info(target: Target) -> Result<pb::ServerInfo, ClientError> {
    let mut client = avlm_stream::client::connect(target).await?;
    client
        .get_info(pb::GetInfoRequest {})
        .await
        .map(|r| r.into_inner())
        .map_err(ClientError::Status)
}

fn localhost(server: &RunningServer) -> String {
    format!("https://localhost:{}", server.addr.port())
}

fn code(result: Result<pb::ServerInfo, ClientError>) -> Option<tonic::Code> {
    match result {
        Ok(_) => None,
        Err(ClientError::Status(s)) => Some(s.code()),
        Err(e) => panic!("expected a gRPC status, got {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_ca_made_here_and_plaintext_refused() {
    let pki = Pki::make("tls");
    let server = start(Transport {
        tls: Some(pki.server_tls(false)),
        auth: None,
    })
    .await;
    assert!(server.url().starts_with("https://"), "{}", server.url());

    let trusted = Target {
        url: localhost(&server),
        ca: Some(pki.path("ca.pem")),
        ..Default::default()
    };
    let got = info(trusted.clone()).await.expect("TLS call with the CA");
    assert!(got.tasks.contains(&(pb::Task::Segments as i32)));

    // host:port with a CA means https.
    let bare = Target {
        url: format!("localhost:{}", server.addr.port()),
        ..trusted.clone()
    };
    info(bare).await.expect("host:port with --ca is https");

    // A stream over TLS runs end to end.
    let run = stream_bytes(
        &server.url().replace("127.0.0.1", "localhost"),
        container_config(),
        read_media("speech.wav"),
        16 * 1024,
    )
    .await;
    // (the plain helper has no CA: it must fail to verify, not hang)
    assert!(
        matches!(
            run,
            Err(ClientError::Connect { .. }) | Err(ClientError::Status(_))
        ),
        "a client that does not trust the CA must fail: {run:?}"
    );
    let mut segments = 0;
    avlm_stream::client::stream(
        &trusted,
        container_config(),
        avlm_stream::client::Source::Memory(read_media("speech.wav")),
        avlm_stream::client::SendOptions {
            chunk_bytes: 16 * 1024,
            realtime: false,
            stop: None,
        },
        |m| {
            if let Some(pb::server_message::Msg::Segment(s)) = &m.msg {
                if s.kind == pb::segment::Kind::SpeechEnd as i32 {
                    segments += 1;
                }
            }
        },
    )
    .await
    .expect("stream over TLS");
    assert_eq!(segments, manifest().speech.len());

    // Plaintext HTTP/2 to the TLS port gets no service.
    let plain = format!("http://127.0.0.1:{}", server.addr.port());
    match tokio::time::timeout(Duration::from_secs(20), info(plain.as_str().into())).await {
        Ok(Ok(i)) => panic!("a plaintext client was served: {i:?}"),
        Ok(Err(e)) => eprintln!("plaintext refused: {e}"),
        Err(_) => panic!("a plaintext client hung instead of failing"),
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_a_client_certificate_from_the_ca() {
    let pki = Pki::make("mtls");
    let server = start(Transport {
        tls: Some(pki.server_tls(true)),
        auth: None,
    })
    .await;
    let with = |cert: &str, key: &str| Target {
        url: localhost(&server),
        ca: Some(pki.path("ca.pem")),
        identity: Some((pki.path(cert), pki.path(key))),
        token: None,
    };
    info(with("client.pem", "client.key"))
        .await
        .expect("a client certificate from the CA is accepted");
    let refused = |r: Result<pb::ServerInfo, ClientError>, who: &str| match r {
        Ok(_) => panic!("{who} was served"),
        Err(e) => eprintln!("{who} refused: {e}"),
    };
    refused(
        info(Target {
            identity: None,
            ..with("client.pem", "client.key")
        })
        .await,
        "a client without a certificate",
    );
    refused(
        info(with("intruder.pem", "intruder.key")).await,
        "a client certificate from another CA",
    );
    server.shutdown().await.unwrap();
}

fn token_file(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("tokens");
    std::fs::write(
        &path,
        "# avlm tokens\nfirst-token-1234\n\n  second-token-5678  \n",
    )
    .unwrap();
    path
}

async fn health(url: &str, token: Option<&str>) -> Result<i32, tonic::Status> {
    let target = Target {
        url: url.to_string(),
        token: token.map(String::from),
        ..Default::default()
    };
    let (channel, bearer) = avlm_stream::client::channel(&target)
        .await
        .expect("connect");
    HealthClient::with_interceptor(channel, bearer)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|r| r.into_inner().status)
}

async fn reflection(url: &str, token: Option<&str>) -> Result<Vec<String>, tonic::Status> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let target = Target {
        url: url.to_string(),
        token: token.map(String::from),
        ..Default::default()
    };
    let (channel, bearer) = avlm_stream::client::channel(&target)
        .await
        .expect("connect");
    let mut client = ServerReflectionClient::with_interceptor(channel, bearer);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await?
        .into_inner();
    let mut names = Vec::new();
    while let Some(r) = replies.message().await? {
        if let Some(MessageResponse::ListServicesResponse(list)) = r.message_response {
            names.extend(list.service.into_iter().map(|s| s.name));
        }
    }
    Ok(names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_required_on_every_service_unless_opened() {
    let dir = std::env::temp_dir().join(format!("avlm-tokens-{}", std::process::id()));
    let file = token_file(&dir);
    let server = start(Transport {
        tls: None,
        auth: Some(Auth::from_file(&file, vec![]).unwrap()),
    })
    .await;
    let url = server.url();
    let with = |token: Option<&str>| Target {
        url: url.clone(),
        token: token.map(String::from),
        ..Default::default()
    };
    assert_eq!(
        code(info(with(None)).await),
        Some(tonic::Code::Unauthenticated)
    );
    assert_eq!(
        code(info(with(Some("first-token-123"))).await),
        Some(tonic::Code::Unauthenticated),
        "a prefix of a token is not the token"
    );
    assert_eq!(
        code(info(with(Some("wrong"))).await),
        Some(tonic::Code::Unauthenticated)
    );
    info(with(Some("first-token-1234")))
        .await
        .expect("first token");
    info(with(Some("second-token-5678")))
        .await
        .expect("second token (surrounding spaces in the file are not part of it)");

    // A stream without a token never starts a session.
    let err = stream_bytes(
        &url,
        container_config(),
        read_media("speech.wav"),
        16 * 1024,
    )
    .await
    .expect_err("stream without a token");
    match err {
        ClientError::Status(s) => {
            assert_eq!(s.code(), tonic::Code::Unauthenticated);
            assert!(s.message().contains("Bearer"), "{}", s.message());
        }
        e => panic!("{e}"),
    }
    assert_eq!(server.state.active_sessions(), 0);

    // Health and reflection need the token too (nothing was opened).
    assert_eq!(
        health(&url, None).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    assert_eq!(
        health(&url, Some("first-token-1234")).await.unwrap(),
        ServingStatus::Serving as i32
    );
    assert_eq!(
        reflection(&url, None).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    let names = reflection(&url, Some("second-token-5678")).await.unwrap();
    assert!(names.iter().any(|n| n == "avlm.v1.Avlm"), "{names:?}");
    server.shutdown().await.unwrap();

    // Opened services answer without a token; the avlm service still asks.
    let server = start(Transport {
        tls: None,
        auth: Some(
            Auth::from_file(&file, vec![OpenService::Health, OpenService::Reflection]).unwrap(),
        ),
    })
    .await;
    let url = server.url();
    assert_eq!(
        health(&url, None).await.unwrap(),
        ServingStatus::Serving as i32
    );
    assert!(reflection(&url, None)
        .await
        .unwrap()
        .iter()
        .any(|n| n == "avlm.v1.Avlm"));
    assert_eq!(
        code(info(url.as_str().into()).await),
        Some(tonic::Code::Unauthenticated)
    );
    server.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_token_file_without_tokens_or_with_spaces_is_refused() {
    let dir = std::env::temp_dir().join(format!("avlm-badtokens-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty");
    std::fs::write(&empty, "# nothing\n\n").unwrap();
    let e = Auth::from_file(&empty, vec![]).unwrap_err().to_string();
    assert!(e.contains("no tokens") && e.contains("empty"), "{e}");
    let spaced = dir.join("spaced");
    std::fs::write(&spaced, "two words\n").unwrap();
    let e = Auth::from_file(&spaced, vec![]).unwrap_err().to_string();
    assert!(e.contains("spaces"), "{e}");
    let e = Auth::from_file(&dir.join("missing"), vec![])
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot read the token file"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_until_the_models_are_loaded() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    // The model bundle takes seconds to load: long enough to watch.
    let starting = tokio::spawn(avlm_stream::server::start_on(
        listener,
        transcribe_server_config(),
        Transport::default(),
    ));
    let (channel, _) = avlm_stream::client::channel(&url.as_str().into())
        .await
        .expect("the listener is open while the models load");
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: "avlm.v1.Avlm".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap().status;
    assert_eq!(
        first,
        ServingStatus::NotServing as i32,
        "health must not say SERVING before the models are loaded"
    );
    // The avlm service itself says why it cannot serve yet.
    if let Err(ClientError::Status(s)) = info(url.as_str().into()).await {
        assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");
        assert!(s.message().contains("loading"), "{}", s.message());
    }
    let next = tokio::time::timeout(Duration::from_secs(120), watch.message())
        .await
        .expect("SERVING once loaded")
        .unwrap()
        .unwrap()
        .status;
    assert_eq!(next, ServingStatus::Serving as i32);
    let server = starting.await.unwrap().expect("server starts");
    info(url.as_str().into()).await.expect("serving now");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pythons_v1alpha_reflection_client_lists_and_resolves_the_service() {
    // grpcio-reflection speaks v1alpha only; v1 is checked with tonic's
    // client in the token test above.
    let server = start(Transport::default()).await;
    let python = repo_root().join(".avlm/venv/bin/python");
    let script = repo_root().join("tools/ops/reflection_list.py");
    let addr = server.addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .arg(addr)
            .output()
            .expect("run the Python reflection client (tools/setup.sh installs grpcio)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.contains(&"avlm.v1.Avlm"), "{lines:?}");
    assert!(lines.contains(&"grpc.health.v1.Health"), "{lines:?}");
    assert!(
        lines.contains(&"methods: Stream,GetInfo"),
        "the v1alpha descriptor database resolves the service: {lines:?}"
    );
    server.shutdown().await.unwrap();
}
