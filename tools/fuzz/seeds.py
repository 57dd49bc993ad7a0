#!/usr/bin/env python3
"""Writes the seed corpus of each fuzz target into fuzz/corpus/<target>/.

Seeds come from the test media (tests/media/generated, made by
tools/make_test_media.py; tests/media/pictures) cut to the target's input
size, and from the bad-input cases the integration tests send
(tests/tests/bad_input.rs, findings.rs, odd_media.rs): garbage bytes, a
corrupted header, a plain MP4, a huge ftyp size, media before the config,
sequence gaps and repeats, bad config values. Each input starts with the
selector bytes its target reads (fuzz/src/entry.rs).

usage: tools/fuzz/seeds.py [REPO_ROOT]
"""

import hashlib
import struct
import sys
from pathlib import Path

ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[2])
MEDIA = ROOT / "tests/media/generated"
PICTURES = ROOT / "tests/media/pictures"
CORPUS = ROOT / "fuzz/corpus"

# Input sizes (run.sh passes the same -max_len).
MAX_LEN = {"ingest": 65536, "raw_pcm": 16384, "wav_header": 4096, "protocol": 4096, "session": 65536}

# Files with a video stream (decoded as audio+video as well as audio alone).
VIDEO = {"slides.webm", "slides_speech.webm", "still.mkv", "video_jump.mkv"}
VIDEO_ONLY = {"slides.webm", "still.mkv"}


def write(target: str, data: bytes) -> None:
    data = data[: MAX_LEN[target]]
    out = CORPUS / target
    out.mkdir(parents=True, exist_ok=True)
    (out / hashlib.sha1(data).hexdigest()).write_bytes(data)


# ---- protobuf, by hand: the few ClientMessage fields the seeds use


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num: int, value) -> bytes:
    if isinstance(value, bytes):
        return varint(num << 3 | 2) + varint(len(value)) + value
    if isinstance(value, float):
        return varint(num << 3 | 5) + struct.pack("<f", value)
    return varint(num << 3) + varint(value)


def config(task=1, modalities=1, hint=None, raw=None, options=b"") -> bytes:
    body = field(1, task) + field(2, modalities)
    if raw is not None:
        fmt, rate, channels = raw
        body += field(4, field(1, fmt) + field(2, rate) + field(3, channels))
    else:
        body += field(3, field(1, hint.encode()) if hint else b"")
    if options:
        body += field(5, options)
    return field(1, body)


def media(data: bytes, seq: int) -> bytes:
    return field(2, field(1, data) + field(2, seq))


def control(action: int, text: bytes = b"") -> bytes:
    return field(3, field(1, action) + (field(2, text) if text else b""))


def messages(*msgs: bytes) -> bytes:
    return b"".join(varint(len(m)) + m for m in msgs)


def chunked(data: bytes, size: int, start_seq: int = 0) -> list:
    return [media(data[i : i + size], start_seq + n) for n, i in enumerate(range(0, len(data), size))]


def main() -> None:
    files = sorted(p for p in MEDIA.glob("*") if p.is_file() and p.suffix != ".json")
    files += sorted(PICTURES.glob("*.png"))
    if not any(MEDIA.glob("*.webm")):
        print(f"warning: no test media in {MEDIA} (run tools/make_test_media.py)", file=sys.stderr)
    hints = ["", "matroska", "mov", "mpegts", "ogg", "wav", "mp3", "flac", "mulaw"]
    for path in files:
        data = path.read_bytes()
        # ingest: [mode, hint] + bytes. mode bits: 0-1 modalities, 2 flush, 3 keep aspect.
        modes = [0]
        if path.name in VIDEO:
            modes += [2, 2 | 8]
        if path.name in VIDEO_ONLY or path.suffix == ".png":
            modes = [1, 1 | 8]
        for mode in modes:
            write("ingest", bytes([mode, 0]) + data)
        write("ingest", bytes([4, 0]) + data[:8192])
        # the WAV header reader sees every file's start
        write("wav_header", bytes([255]) + data[:4096])
        write("wav_header", bytes([0]) + data[:512])
    pcm = (MEDIA / "speech.s16le").read_bytes() if (MEDIA / "speech.s16le").exists() else b"\0\1" * 4096
    for mode, rate in [(0, 16000), (2, 48000), (1, 44100), (4, 8000), (3, 192000)]:
        r = (rate - 8000).to_bytes(3, "little")
        write("raw_pcm", bytes([mode]) + r + pcm[:16000])
    nan = struct.pack("<f", float("nan")) * 64 + struct.pack("<f", 1e19) * 64 + struct.pack("<f", -float("inf")) * 8
    write("raw_pcm", bytes([1]) + (8000).to_bytes(3, "little") + nan)
    write("raw_pcm", bytes([0, 0, 0, 0]) + b"\x01")  # a byte short of one frame

    # Bad container bytes (bad_input.rs, findings.rs, odd_media.rs).
    x = 0x12345678
    garbage = bytearray()
    for _ in range(4096):
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF
        garbage.append(x >> 24)
    write("ingest", bytes([0, 0]) + bytes(garbage))
    for name in ["speech.frag.mp4", "speech.webm", "speech.ogg", "speech.mp3", "speech.wav"]:
        p = MEDIA / name
        if not p.exists():
            continue
        data = p.read_bytes()
        write("ingest", bytes([0, 0]) + b"\x77\x3c\x27\xcb" + data[4:65536])  # huge first box size
        write("ingest", bytes([0, 0]) + b"\0" * 64 + data[64:65536])  # zeroed start
        write("ingest", bytes([0, 0]) + b"\xff" * 64 + data[64:65536])
        write("ingest", bytes([0, 0]) + data[:300])  # header alone
    for hint in [4, 6]:  # a hint that names the wrong demuxer
        p = MEDIA / "speech.ogg"
        if p.exists():
            write("ingest", bytes([0, hint]) + p.read_bytes()[:65536])

    wav = (MEDIA / "speech.wav").read_bytes()[:44] if (MEDIA / "speech.wav").exists() else b""
    write("wav_header", bytes([3]) + wav)
    write("wav_header", bytes([0]) + b"RIFF\0\0\0\0WAVEfmt \x28\0\0\0\xfe\xff\2\0\x80\xbb\0\0\0\0\0\0\x08\0\x20\0" + b"\0" * 24 + b"data\xff\xff\xff\xff")
    write("wav_header", bytes([7]) + b"RIFF\0\0\0\0WAVELIST\x03\0\0\0abc\0fmt \x10\0\0\0\1\0\1\0\x40\x1f\0\0\0\0\0\0\2\0\x10\0data\0\0\0\0")

    # Protocol sequences (bad_input.rs): good calls, then each misbehaviour.
    webm = (MEDIA / "short.webm").read_bytes() if (MEDIA / "short.webm").exists() else b""
    small = webm[:6000]
    stats0 = field(11, 0)
    good = [config(options=stats0)] + chunked(small, 1500) + [control(2)]
    calls = [
        good,
        [config(options=stats0)] + chunked(small, 2000) + [control(1)] + chunked(small[:0], 1) + [control(2)],
        [media(b"abc", 0)],
        [config(), config()],
        [config(), media(small[:100], 0), media(small[100:200], 2)],  # gap
        [config(), media(small[:100], 0), media(small[100:200], 0)],  # repeat
        [config(), media(small[:100], 1)],  # late start
        [config(), control(2), media(small[:100], 0)],  # media after end
        [config(), control(2)],  # empty stream
        [config(task=3)],
        [config(task=2)],
        [config(modalities=2)],
        [config(hint="hls")],
        [config(hint="s16le")],
        [config(hint="x" * 100)],
        [config(options=field(1, 1.5))],
        [config(options=field(5, 999))],
        [config(options=field(7, b"nope"))],
        [config(options=field(8, 1000.0) + field(9, 5000))],
        [config(options=field(14, 1) + field(15, 2.0))],
        [config(raw=(1, 16000, 1), options=stats0)] + chunked(pcm[:8000], 1000) + [control(2)],
        [config(raw=(2, 8000, 2))] + chunked(nan, 100),
        [config(raw=(0, 16000, 1))],
        [config(raw=(1, 7999, 3))],
        [config(modalities=3, options=field(14, 1))],
        [config(hint="mpegts")] + chunked((MEDIA / "speech.ogg").read_bytes()[:4000] if (MEDIA / "speech.ogg").exists() else b"", 1000),
        [control(3, b"what is this?")],
        [config(), control(3, b"q")],
        [b""],
        [b"\x0a\x7f\x01\x02"],  # no valid protobuf
    ]
    for msgs in calls:
        data = messages(*msgs)
        write("session", data)
        write("protocol", data[:4096])


if __name__ == "__main__":
    main()
