//! `avlm info`: ask a server what it runs.

use avlm_proto as pb;
use avlm_stream::client::{self, ClientError};

#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// Server URL, or HOST:PORT for plain http.
    #[arg(long, env = "AVLM_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,
    #[command(flatten)]
    pub credentials: super::credentials::Credentials,
}

/// Returns the exit code: as `avlm stream`'s, 3 when the server cannot be
/// reached and 10 + the gRPC code when it refuses.
pub async fn run(args: InfoArgs) -> anyhow::Result<i32> {
    let asked = async {
        let mut client = client::connect(args.credentials.target(&args.server)).await?;
        let reply = client.get_info(pb::GetInfoRequest {}).await;
        reply.map(|r| r.into_inner()).map_err(ClientError::Status)
    };
    let info = match asked.await {
        Ok(info) => info,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(e.exit_code());
        }
    };
    println!("avlm {} at {}", info.version, args.server);
    println!(
        "sessions: {} active of {}",
        info.active_sessions, info.max_sessions
    );
    println!("max message: {} bytes", info.max_message_bytes);
    let tasks: Vec<String> = info
        .tasks
        .iter()
        .map(|t| {
            pb::Task::try_from(*t)
                .map(|t| t.as_str_name().to_string())
                .unwrap_or_else(|_| t.to_string())
        })
        .collect();
    println!("tasks: {}", tasks.join(", "));
    for m in info.models {
        let named = |what: &str, file: &str| {
            if file.is_empty() {
                String::new()
            } else {
                format!(", {what} {file}")
            }
        };
        println!(
            "model {}: vad {}{}{}{}{}",
            m.name,
            m.vad,
            named("audio encoder", &m.audio_encoder),
            named("lip encoder", &m.lip_encoder),
            named("vision encoder", &m.vision_encoder),
            named("LLM", &m.llm)
        );
        if !m.transcribe_modalities.is_empty() {
            let reads: Vec<String> = m
                .transcribe_modalities
                .iter()
                .map(|x| {
                    pb::Modalities::try_from(*x)
                        .map(|x| x.as_str_name().to_string())
                        .unwrap_or_else(|_| x.to_string())
                })
                .collect();
            println!("  TRANSCRIBE reads: {}", reads.join(", "));
        }
    }
    Ok(0)
}
