//! Printing server messages as they arrive: aligned text for people, one
//! JSON object per line for programs.

use std::io::{IsTerminal, Write};

use avlm_proto as pb;
use serde_json::json;

/// One server message as a JSON value with a `type` field.
pub fn to_json(msg: &pb::ServerMessage) -> serde_json::Value {
    use pb::server_message::Msg;
    match &msg.msg {
        Some(Msg::Ready(r)) => {
            let options = r.config.as_ref().and_then(|c| c.options.as_ref());
            json!({
                "type": "ready",
                "session_id": r.session_id,
                "task": r.config.as_ref().and_then(|c| pb::Task::try_from(c.task).ok()).map(|t| t.as_str_name()),
                "model": r.model.as_ref().map(|m| m.name.clone()),
                "vad": r.model.as_ref().map(|m| m.vad.clone()),
                "options": options.map(|o| json!({
                    "vad_threshold": o.vad_threshold,
                    "min_silence_ms": o.min_silence_ms,
                    "min_speech_ms": o.min_speech_ms,
                    "pre_roll_ms": o.pre_roll_ms,
                    "max_segment_ms": o.max_segment_ms,
                    "video_fps": o.video_fps,
                    "video_width": o.video_width,
                    "video_height": o.video_height,
                    "stats_interval_ms": o.stats_interval_ms,
                    "partial_results": o.partial_results,
                    "partial_interval_ms": o.partial_interval_ms,
                    "whole_utterance": o.whole_utterance,
                    "captions": o.captions,
                    "caption_fps": o.caption_fps,
                    "caption_threshold": o.caption_threshold,
                    "caption_max_tokens": o.caption_max_tokens,
                })),
            })
        }
        Some(Msg::Segment(s)) => {
            let kind =
                pb::segment::Kind::try_from(s.kind).unwrap_or(pb::segment::Kind::Unspecified);
            if kind == pb::segment::Kind::SpeechStart {
                json!({"type": "speech_start", "segment_id": s.segment_id, "start_s": round3(s.start_s)})
            } else {
                json!({"type": "speech_end", "segment_id": s.segment_id, "start_s": round3(s.start_s), "end_s": round3(s.end_s), "reason": s.end_reason})
            }
        }
        Some(Msg::Stats(s)) => json!({
            "type": "stats",
            "media_seconds_received": round3(s.media_seconds_received),
            "media_seconds_processed": round3(s.media_seconds_processed),
            "real_time_factor": s.real_time_factor,
            "seconds_buffered": round3(s.seconds_buffered),
            "bytes_received": s.bytes_received,
            "video_frames": s.video_frames,
            "segments_pending": s.segments_pending,
            "audio_seconds_pending": round3(s.audio_seconds_pending),
            "model_busy": s.model_busy,
            "expected_delay_s": round3(s.expected_delay_s),
            "caption_frames": s.caption_frames,
        }),
        Some(Msg::Partial(p)) => json!({
            "type": "partial", "segment_id": p.segment_id, "stable_text": p.stable_text,
            "unstable_text": p.unstable_text, "start_s": round3(p.start_s), "end_s": round3(p.end_s),
        }),
        Some(Msg::Final(f)) => json!({
            "type": "final", "segment_id": f.segment_id, "text": f.text, "start_s": round3(f.start_s),
            "end_s": round3(f.end_s), "decode_latency_s": f.decode_latency_s, "compute_s": f.compute_s,
            "words": f.words.iter().map(|w| json!({"text": w.text, "start_s": round3(w.start_s), "end_s": round3(w.end_s)})).collect::<Vec<_>>(),
        }),
        Some(Msg::Caption(c)) => {
            json!({"type": "caption", "text": c.text, "media_time_s": round3(c.media_time_s),
                "latency_s": c.latency_s, "compute_s": c.compute_s})
        }
        Some(Msg::Ack(a)) => json!({"type": "ack", "next_seq": a.next_seq}),
        Some(Msg::Resumed(r)) => json!({"type": "resumed", "next_seq": r.next_seq}),
        None => json!({"type": "empty"}),
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Whether to colour stdout: only a terminal, and not when `NO_COLOR` is
/// set to anything but the empty string (https://no-color.org).
pub fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// `text` dimmed when `colour`, else as is.
pub fn dim(text: &str, colour: bool) -> String {
    if colour && !text.is_empty() {
        format!("\x1b[2m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// Prints `msg` for a person; the unstable end of a partial is dimmed when `colour`.
pub fn human(out: &mut impl Write, msg: &pb::ServerMessage, colour: bool) -> std::io::Result<()> {
    use pb::server_message::Msg;
    match &msg.msg {
        Some(Msg::Ready(r)) => {
            let task = r.config.as_ref().and_then(|c| pb::Task::try_from(c.task).ok()).map(|t| t.as_str_name()).unwrap_or("?");
            let model = r.model.as_ref().map(|m| m.name.as_str()).unwrap_or("?");
            writeln!(out, "ready     session {} · {task} · model {model}", r.session_id)?;
        }
        Some(Msg::Segment(s)) => {
            if s.kind == pb::segment::Kind::SpeechStart as i32 {
                writeln!(out, "speech    #{:<3} starts {:>8.2}s", s.segment_id, s.start_s)?;
            } else {
                writeln!(
                    out,
                    "segment   #{:<3} {:>8.2}s – {:>8.2}s  ({:.2}s, ended by {})",
                    s.segment_id,
                    s.start_s,
                    s.end_s,
                    s.end_s - s.start_s,
                    s.end_reason
                )?;
            }
        }
        Some(Msg::Stats(s)) => writeln!(
            out,
            "stats     {:.1}s received · {:.1}s processed · RTF {:.3} · {:.1}s buffered · {} bytes{}{}{}",
            s.media_seconds_received,
            s.media_seconds_processed,
            s.real_time_factor,
            s.seconds_buffered,
            s.bytes_received,
            if s.video_frames > 0 { format!(" · {} frames", s.video_frames) } else { String::new() },
            if s.caption_frames > 0 {
                format!(" · {} captioned", s.caption_frames)
            } else {
                String::new()
            },
            if s.segments_pending > 0 {
                format!(
                    " · {} finals pending ({:.1}s of audio, ~{:.1}s to go)",
                    s.segments_pending, s.audio_seconds_pending, s.expected_delay_s
                )
            } else {
                String::new()
            }
        )?,
        Some(Msg::Partial(p)) => writeln!(out, "partial   #{:<3} {}{}", p.segment_id, p.stable_text, dim(&p.unstable_text, colour))?,
        Some(Msg::Final(f)) => writeln!(out, "final     #{:<3} {:>8.2}s – {:>8.2}s  {}", f.segment_id, f.start_s, f.end_s, f.text)?,
        Some(Msg::Caption(c)) => writeln!(out, "caption   {:>8.2}s  {}", c.media_time_s, c.text)?,
        Some(Msg::Resumed(r)) => writeln!(out, "resumed   the connection dropped and came back; sending from chunk {}", r.next_seq)?,
        Some(Msg::Ack(_)) | None => {}
    }
    out.flush()
}
