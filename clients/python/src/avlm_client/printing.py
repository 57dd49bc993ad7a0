"""Server messages as text for people (the layout of `avlm stream`) and as
JSON objects for programs (the same fields as `avlm stream --json`)."""

from __future__ import annotations

from typing import Optional

import grpc

from . import avlm_pb2 as pb


def _r3(x: float) -> float:
    return round(x * 1000.0) / 1000.0


def _optional(msg, field: str):
    return getattr(msg, field) if msg.HasField(field) else None


_OPTION_FIELDS = (
    "vad_threshold", "min_silence_ms", "min_speech_ms", "pre_roll_ms", "max_segment_ms",
    "video_fps", "video_width", "video_height", "stats_interval_ms", "partial_results",
    "partial_interval_ms", "whole_utterance", "captions", "caption_fps", "caption_threshold",
    "caption_max_tokens",
)


def to_dict(msg: pb.ServerMessage) -> dict:
    """One server message as a dict with a `type` field."""
    kind = msg.WhichOneof("msg")
    if kind == "ready":
        r = msg.ready
        return {
            "type": "ready",
            "session_id": r.session_id,
            "task": pb.Task.Name(r.config.task) if r.HasField("config") else None,
            "model": r.model.name if r.HasField("model") else None,
            "vad": r.model.vad if r.HasField("model") else None,
            "options": {f: _optional(r.config.options, f) for f in _OPTION_FIELDS}
            if r.config.HasField("options")
            else None,
        }
    if kind == "segment":
        s = msg.segment
        if s.kind == pb.Segment.KIND_SPEECH_START:
            return {"type": "speech_start", "segment_id": s.segment_id, "start_s": _r3(s.start_s)}
        return {
            "type": "speech_end", "segment_id": s.segment_id, "start_s": _r3(s.start_s),
            "end_s": _r3(s.end_s), "reason": s.end_reason,
        }
    if kind == "stats":
        s = msg.stats
        return {
            "type": "stats",
            "media_seconds_received": _r3(s.media_seconds_received),
            "media_seconds_processed": _r3(s.media_seconds_processed),
            "real_time_factor": s.real_time_factor,
            "seconds_buffered": _r3(s.seconds_buffered),
            "bytes_received": s.bytes_received,
            "video_frames": s.video_frames,
            "segments_pending": s.segments_pending,
            "audio_seconds_pending": _r3(s.audio_seconds_pending),
            "model_busy": s.model_busy,
            "expected_delay_s": _r3(s.expected_delay_s),
            "caption_frames": s.caption_frames,
        }
    if kind == "partial":
        p = msg.partial
        return {
            "type": "partial", "segment_id": p.segment_id, "stable_text": p.stable_text,
            "unstable_text": p.unstable_text, "start_s": _r3(p.start_s), "end_s": _r3(p.end_s),
        }
    if kind == "final":
        f = msg.final
        return {
            "type": "final", "segment_id": f.segment_id, "text": f.text, "start_s": _r3(f.start_s),
            "end_s": _r3(f.end_s), "decode_latency_s": f.decode_latency_s, "compute_s": f.compute_s,
            "words": [
                {"text": w.text, "start_s": _r3(w.start_s), "end_s": _r3(w.end_s)} for w in f.words
            ],
        }
    if kind == "caption":
        c = msg.caption
        d = {
            "type": "caption", "text": c.text, "media_time_s": _r3(c.media_time_s),
            "latency_s": c.latency_s, "compute_s": c.compute_s,
        }
        if c.question:
            d["question"] = c.question
        return d
    return {"type": "empty"}


def error_dict(code: grpc.StatusCode, message: str) -> dict:
    """The `error` line of `--json`, with the code spelled as `avlm stream`
    spells it (`InvalidArgument`)."""
    return {"type": "error", "code": "".join(w.capitalize() for w in code.name.split("_")), "message": message}


def dim(text: str, colour: bool) -> str:
    return f"\x1b[2m{text}\x1b[0m" if colour and text else text


def human(msg: pb.ServerMessage, colour: bool = False) -> Optional[str]:
    """One server message as a line for people (no newline), or None."""
    kind = msg.WhichOneof("msg")
    if kind == "ready":
        r = msg.ready
        task = pb.Task.Name(r.config.task) if r.HasField("config") else "?"
        model = r.model.name if r.HasField("model") else "?"
        return f"ready     session {r.session_id} · {task} · model {model}"
    if kind == "segment":
        s = msg.segment
        if s.kind == pb.Segment.KIND_SPEECH_START:
            return f"speech    #{s.segment_id:<3} starts {s.start_s:>8.2f}s"
        return (
            f"segment   #{s.segment_id:<3} {s.start_s:>8.2f}s – {s.end_s:>8.2f}s  "
            f"({s.end_s - s.start_s:.2f}s, ended by {s.end_reason})"
        )
    if kind == "stats":
        s = msg.stats
        line = (
            f"stats     {s.media_seconds_received:.1f}s received · {s.media_seconds_processed:.1f}s processed"
            f" · RTF {s.real_time_factor:.3f} · {s.seconds_buffered:.1f}s buffered · {s.bytes_received} bytes"
        )
        if s.video_frames > 0:
            line += f" · {s.video_frames} frames"
        if s.caption_frames > 0:
            line += f" · {s.caption_frames} captioned"
        if s.segments_pending > 0:
            line += (
                f" · {s.segments_pending} finals pending ({s.audio_seconds_pending:.1f}s of audio,"
                f" ~{s.expected_delay_s:.1f}s to go)"
            )
        return line
    if kind == "partial":
        p = msg.partial
        return f"partial   #{p.segment_id:<3} {p.stable_text}{dim(p.unstable_text, colour)}"
    if kind == "final":
        f = msg.final
        return f"final     #{f.segment_id:<3} {f.start_s:>8.2f}s – {f.end_s:>8.2f}s  {f.text}"
    if kind == "caption":
        c = msg.caption
        return f"caption   {c.media_time_s:>8.2f}s  {c.text}"
    return None


class Printer:
    """Writes messages to `out` as `human` lines. On a terminal (`redraw`),
    each partial replaces the one before it on the same line, and the next
    other line overwrites it, as `avlm camera` shows a transcript."""

    def __init__(self, out, colour: bool = False, redraw: bool = False, width: int = 80):
        self.out = out
        self.colour = colour
        self.redraw = redraw
        self.width = width
        self._open_partial = False

    def write(self, msg: pb.ServerMessage) -> None:
        line = human(msg, self.colour)
        if line is None:
            return
        partial = msg.WhichOneof("msg") == "partial"
        if self.redraw and self._open_partial:
            self.out.write("\r\x1b[2K")  # back over the partial line, cleared
        if self.redraw and partial:
            # one screen line, or the carriage return could not reach its start
            plain = human(msg, False)
            if len(plain) >= self.width:
                line = plain[:9] + "…" + plain[len(plain) - (self.width - 11):]
            self.out.write(line)
        else:
            self.out.write(line + "\n")
        self._open_partial = self.redraw and partial
        self.out.flush()

    def close(self) -> None:
        if self._open_partial:
            self.out.write("\n")
            self.out.flush()
            self._open_partial = False
