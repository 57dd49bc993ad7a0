//! The browser demo (`avlm serve --web`): its page and assets, its
//! WebSocket protocol driven by a Rust client (finals from a streamed WebM;
//! bad start messages, garbage media, oversized messages and missing tokens
//! answered with an error event naming the gRPC status; a closed socket
//! frees its session), and the page itself in headless Chromium with a fake
//! camera and a recording of speech as its microphone.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A plain HTTP/1.1 GET: (status line and headers, body).
async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("headers");
    (head.to_ascii_lowercase(), body.to_string())
}

async fn connect(addr: std::net::SocketAddr) -> Socket {
    tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .expect("connect")
        .0
}

async fn send_json(ws: &mut Socket, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// Every event until the server closes the socket.
async fn events_until_close(ws: &mut Socket) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(120), ws.next())
            .await
            .unwrap_or_else(|_| panic!("no event within 120 s after {events:#?}"))
        {
            Some(Ok(Message::Text(t))) => events.push(serde_json::from_str(&t).expect("JSON")),
            Some(Ok(Message::Close(_))) | None => return events,
            Some(Ok(_)) => {}
            // A reset after the close frame is a close too.
            Some(Err(_)) => return events,
        }
    }
}

/// The error event a socket ends with after `messages`.
async fn refused(addr: std::net::SocketAddr, messages: Vec<Message>) -> Value {
    let mut ws = connect(addr).await;
    for m in messages {
        // The server may close before everything is sent.
        if ws.send(m).await.is_err() {
            break;
        }
    }
    let events = events_until_close(&mut ws).await;
    let last = events.last().cloned().unwrap_or(Value::Null);
    assert_eq!(last["type"], "error", "{events:#?}");
    last
}

fn start(video: bool) -> Message {
    Message::Text(
        json!({"type": "start", "video": video, "mime": "video/webm;codecs=vp8,opus"})
            .to_string()
            .into(),
    )
}

fn junk(n: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9u32;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

async fn wait_for_no_sessions(server: &avlm_stream::server::RunningServer) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.state.active_sessions() > 0 {
        assert!(
            Instant::now() < deadline,
            "a session outlived its socket by 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_transcribes_a_webm_and_refuses_bad_input() {
    let server = start_server(short_decode_server_config("web-socket", 16)).await;
    let web = avlm_stream::web::serve("127.0.0.1:0".parse().unwrap(), server.url())
        .await
        .unwrap();
    let addr = web.addr;

    // The page and its assets, from this server only.
    let (head, page) = get(addr, "/").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(head.contains("content-security-policy: default-src 'none'"));
    assert!(page.contains("<script src=\"app.js\">"));
    for (path, kind) in [("/app.js", "text/javascript"), ("/style.css", "text/css")] {
        let (head, body) = get(addr, path).await;
        assert!(head.contains(&format!("content-type: {kind}")), "{head}");
        for text in [&page, &body] {
            assert!(
                !text.contains("http://") && !text.contains("https://"),
                "{path} loads from elsewhere"
            );
        }
    }
    let (_, script) = get(addr, "/app.js").await;
    assert!(
        script.contains("{\"type\":\"start\""),
        "the protocol is described in the page's source"
    );

    // Refusals: each an error event with the status name, then a close.
    let e = refused(addr, vec![Message::Binary(junk(1000).into())]).await;
    assert_eq!(e["code"], "INVALID_ARGUMENT");
    assert!(
        e["message"].as_str().unwrap().contains("start message"),
        "{e}"
    );
    let e = refused(
        addr,
        vec![Message::Text(r#"{"type":"start","video":"yes"}"#.into())],
    )
    .await;
    assert_eq!(e["code"], "INVALID_ARGUMENT");
    assert!(
        e["message"].as_str().unwrap().contains("invalid type"),
        "{e}"
    );
    let e = refused(addr, vec![Message::Text("{not json".into())]).await;
    assert!(e["message"].as_str().unwrap().contains("not JSON"), "{e}");
    let e = refused(
        addr,
        vec![Message::Text(
            r#"{"type":"start","mime":"audio/wav"}"#.into(),
        )],
    )
    .await;
    assert!(e["message"].as_str().unwrap().contains("audio/wav"), "{e}");
    // Garbage media after a good start: FFmpeg's refusal, as the session says it.
    let e = refused(
        addr,
        vec![
            start(false),
            Message::Binary(junk(100_000).into()),
            Message::Text(r#"{"type":"stop"}"#.into()),
        ],
    )
    .await;
    assert_eq!(e["code"], "INVALID_ARGUMENT", "{e}");
    let e = refused(
        addr,
        vec![
            start(false),
            Message::Binary(vec![0; avlm_stream::web::MAX_MEDIA_MESSAGE + 1].into()),
        ],
    )
    .await;
    assert_eq!(e["code"], "RESOURCE_EXHAUSTED", "{e}");
    let e = refused(addr, vec![start(false), start(false)]).await;
    assert!(
        e["message"].as_str().unwrap().contains("second start"),
        "{e}"
    );
    wait_for_no_sessions(&server).await;

    // A socket closed mid-stream frees its session.
    let webm = read_media("speech.webm");
    let mut ws = connect(addr).await;
    ws.send(start(false)).await.unwrap();
    let ready = events_until_ready(&mut ws).await;
    assert_eq!(ready["modalities"], "audio");
    ws.send(Message::Binary(webm[..40_000].to_vec().into()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.state.active_sessions(), 1);
    drop(ws);
    wait_for_no_sessions(&server).await;

    // The server still serves: a whole recording, in recorder-sized pieces.
    let begun = Instant::now();
    let mut ws = connect(addr).await;
    ws.send(start(false)).await.unwrap();
    for piece in webm.chunks(16 * 1024) {
        ws.send(Message::Binary(piece.to_vec().into()))
            .await
            .unwrap();
    }
    send_json(&mut ws, json!({"type": "stop"})).await;
    let events = events_until_close(&mut ws).await;
    let of = |kind: &str| -> Vec<&Value> { events.iter().filter(|e| e["type"] == kind).collect() };
    assert_eq!(events[0]["type"], "ready", "{events:#?}");
    assert!(events[0]["session_id"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    assert_eq!(events[0]["captions"], false);
    assert_eq!(events.last().unwrap()["type"], "end", "{events:#?}");
    assert!(of("error").is_empty(), "{events:#?}");
    let finals = of("final");
    assert_eq!(finals.len(), manifest().speech.len(), "{events:#?}");
    for f in &finals {
        assert!(!f["text"].as_str().unwrap().trim().is_empty(), "{f}");
    }
    assert_eq!(of("speech_start").len(), finals.len());
    assert_eq!(of("speech_end").len(), finals.len());
    assert!(!of("stats").is_empty());
    eprintln!(
        "{} finals, {} partials over the socket in {:.1} s: {:?}",
        finals.len(),
        of("partial").len(),
        begun.elapsed().as_secs_f64(),
        finals.iter().map(|f| &f["text"]).collect::<Vec<_>>()
    );
    wait_for_no_sessions(&server).await;
    drop(web);
    server.shutdown().await.unwrap();
}

async fn events_until_ready(ws: &mut Socket) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .expect("ready within 60 s")
        {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                match v["type"].as_str() {
                    Some("ready") => return v,
                    Some("error") => panic!("{v}"),
                    _ => {}
                }
            }
            other => panic!("socket ended before ready: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_needs_the_token_when_the_server_does() {
    let transport = avlm_stream::server::Transport {
        auth: Some(avlm_stream::server::Auth::new(vec!["s3cret/token=".into()], vec![]).unwrap()),
        ..Default::default()
    };
    let server = avlm_stream::server::start_with(
        short_decode_server_config("web-auth", 4),
        "127.0.0.1:0".parse().unwrap(),
        transport,
    )
    .await
    .unwrap();
    let web = avlm_stream::web::serve("127.0.0.1:0".parse().unwrap(), server.url())
        .await
        .unwrap();

    // The page itself is open; the socket is not.
    let (head, _) = get(web.addr, "/").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let e = refused(web.addr, vec![start(false)]).await;
    assert_eq!(e["code"], "UNAUTHENTICATED", "{e}");
    let e = refused(
        web.addr,
        vec![Message::Text(
            json!({"type": "start", "token": "wrong"})
                .to_string()
                .into(),
        )],
    )
    .await;
    assert_eq!(e["code"], "UNAUTHENTICATED", "{e}");

    // In the start message (what the page sends), or as a header.
    let mut ws = connect(web.addr).await;
    send_json(&mut ws, json!({"type": "start", "token": "s3cret/token="})).await;
    events_until_ready(&mut ws).await;
    drop(ws);
    let mut request = format!("ws://{}/ws", web.addr)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", "Bearer s3cret/token=".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    ws.send(start(false)).await.unwrap();
    events_until_ready(&mut ws).await;
    drop(ws);
    wait_for_no_sessions(&server).await;
    drop(web);
    server.shutdown().await.unwrap();
}

/// The Chromium binary: Debian's `chromium` (tools/setup.sh installs it).
fn chromium() -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        for name in ["chromium", "chromium-browser"] {
            let p = Path::new(dir).join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!("chromium is missing: run tools/setup.sh (it installs Debian's chromium package)");
}

/// A DevTools protocol client over the browser's socket, with one page
/// attached (flat sessions).
struct Cdp {
    ws: Socket,
    next: u64,
    session: Option<String>,
}

impl Cdp {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            message["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::Text(message.to_string().into()))
            .await
            .unwrap();
        loop {
            let reply = tokio::time::timeout(Duration::from_secs(60), self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{method}: no reply within 60 s"));
            let Some(Ok(Message::Text(t))) = reply else {
                panic!("{method}: the browser's socket ended: {reply:?}");
            };
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression in the page.
    async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(r.get("exceptionDetails").is_none(), "{expression}: {r}");
        r["result"]["value"].clone()
    }
}

const WIDTH: u32 = 1280;
const HEIGHT: u32 = 720;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_streams_from_headless_chromium_and_shows_finals() {
    let browser = chromium();
    let server = start_server(short_decode_server_config("web-browser", 16)).await;
    let web = avlm_stream::web::serve("127.0.0.1:0".parse().unwrap(), server.url())
        .await
        .unwrap();
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("web-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The fake camera shows a test picture (a Y4M file, looped).
    let camera = dir.join("camera.y4m");
    let made = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-loop", "1", "-i"])
        .arg(repo_root().join("tests/media/pictures/tiger.png"))
        .args([
            "-t",
            "1",
            "-r",
            "5",
            "-vf",
            "scale=640:480,setsar=1",
            "-pix_fmt",
            "yuv420p",
        ])
        .arg(&camera)
        .status()
        .expect("ffmpeg");
    assert!(made.success());

    let begun = Instant::now();
    let mut child = std::process::Command::new(&browser)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--mute-audio",
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            "--autoplay-policy=no-user-gesture-required",
            "--remote-debugging-port=0",
            &format!("--window-size={WIDTH},{HEIGHT}"),
        ])
        .arg(format!(
            "--use-file-for-fake-audio-capture={}",
            media("speech.wav").display()
        ))
        .arg(format!(
            "--use-file-for-fake-video-capture={}",
            camera.display()
        ))
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", browser.display()));
    let stderr = child.stderr.take().unwrap();
    let mut child = Browser(child);
    // Its log is read on a thread: the DevTools line, then drained unseen.
    let (found, endpoint) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut found = Some(found);
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(url) = line.strip_prefix("DevTools listening on ") {
                if let Some(tx) = found.take() {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        }
    });
    let endpoint = tokio::time::timeout(Duration::from_secs(30), endpoint)
        .await
        .expect("chromium's DevTools endpoint within 30 s")
        .expect("chromium exited without a DevTools endpoint");
    let (ws, _) = tokio_tungstenite::connect_async(endpoint).await.unwrap();
    let mut cdp = Cdp {
        ws,
        next: 0,
        session: None,
    };
    let page = format!("http://{}/", web.addr);
    let target = cdp
        .call("Target.createTarget", json!({"url": "about:blank"}))
        .await;
    let attached = cdp
        .call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        )
        .await;
    cdp.session = Some(attached["sessionId"].as_str().unwrap().to_string());
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": false}),
    )
    .await;
    cdp.call("Page.navigate", json!({"url": page})).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while cdp.eval("document.readyState").await != "complete" {
        assert!(Instant::now() < deadline, "the page did not load");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cdp.eval("document.getElementById('start').click(); true")
        .await;

    // Poll the page until a final and a caption are drawn (the first final
    // lands about 5 s into the speech; a debug build's model falls behind
    // real time with captions on, so stopping early keeps the test short).
    let probe = "JSON.stringify({state: document.body.dataset.state, \
        error: document.getElementById('error').hidden ? null : document.getElementById('error').textContent, \
        status: document.getElementById('status').textContent, \
        finals: [...document.querySelectorAll('#finals li')].map(li => li.textContent), \
        partials: Number(document.body.dataset.partials), \
        captions: [...document.querySelectorAll('#captions li')].map(li => li.textContent), \
        video: document.getElementById('video').videoWidth})";
    let deadline = Instant::now() + Duration::from_secs(90);
    let shown = loop {
        let s: Value = serde_json::from_str(cdp.eval(probe).await.as_str().unwrap()).unwrap();
        assert!(s["error"].is_null(), "the page shows an error: {s}");
        if !s["finals"].as_array().unwrap().is_empty()
            && !s["captions"].as_array().unwrap().is_empty()
        {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "no final and caption on the page within 90 s: {s}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let to_final = begun.elapsed();
    assert_eq!(shown["state"], "live", "{shown}");
    let status = shown["status"].as_str().unwrap();
    assert!(
        status.contains("sound and video") && status.contains("captions on"),
        "{shown}"
    );
    assert_eq!(
        shown["video"], 640,
        "the camera's picture is shown: {shown}"
    );
    // "0:00.8" and then the words.
    let first = shown["finals"][0].as_str().unwrap();
    assert!(first.len() > "0:00.0".len() + 2, "{shown}");
    // Finals white, the partial grey, captions in their own marked boxes.
    let styles = cdp
        .eval(
            "[getComputedStyle(document.querySelector('#finals li')).color, \
              getComputedStyle(document.querySelector('#partial .stable')).color, \
              getComputedStyle(document.querySelector('#captions li'), '::before').content].join('|')",
        )
        .await;
    assert_eq!(styles, "rgb(255, 255, 255)|rgb(187, 187, 187)|\"scene\"");

    let shot = cdp
        .call("Page.captureScreenshot", json!({"format": "png"}))
        .await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    let path = dir.join("web-demo.png");
    std::fs::write(&path, &png).unwrap();
    check_screenshot(&png);

    // Stop: the last words come, the session ends, the page says so.
    cdp.eval("document.getElementById('stop').click(); true")
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let s: Value = serde_json::from_str(cdp.eval(probe).await.as_str().unwrap()).unwrap();
        assert!(s["error"].is_null(), "the page shows an error: {s}");
        if s["state"] == "idle" {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the stream did not end within 60 s: {s}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(done["status"], "done", "{done}");
    wait_for_no_sessions(&server).await;
    // Partials come as the words form (the first ones before any final).
    assert!(
        done["partials"].as_u64().unwrap() > 0,
        "no partial drawn: {done}"
    );
    assert!(
        done["finals"].as_array().unwrap().len() >= 2,
        "the words before the stop are transcribed: {done}"
    );
    eprintln!(
        "chromium: a final and a caption after {:.1} s; {} finals, {} partials, captions {:?} once stopped after {:.1} s; screenshot {}",
        to_final.as_secs_f64(),
        done["finals"].as_array().unwrap().len(),
        done["partials"],
        done["captions"],
        begun.elapsed().as_secs_f64(),
        path.display(),
    );
    let _ = cdp.call("Browser.close", json!({})).await;
    child.wait(Duration::from_secs(10));
    drop(web);
    server.shutdown().await.unwrap();
}

/// The browser process, killed if the test ends early.
struct Browser(std::process::Child);

impl Browser {
    /// Waits for it to exit, for at most `limit`.
    fn wait(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A PNG of the page's size whose pixels are not all alike.
fn check_screenshot(png: &[u8]) {
    let decoder = png::Decoder::new(std::io::Cursor::new(png));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut pixels).expect("PNG pixels");
    assert_eq!((frame.width, frame.height), (WIDTH, HEIGHT));
    let channels = frame.color_type.samples();
    let mut colours = std::collections::HashSet::new();
    for px in pixels[..frame.buffer_size()].chunks(channels) {
        colours.insert(px.to_vec());
    }
    assert!(
        colours.len() > 500,
        "the screenshot has only {} colours",
        colours.len()
    );
}
