"""Calls to an avlm server: channels with TLS and bearer tokens, the Stream
call over a file, PCM or any iterator of bytes, and GetInfo. Events come back
as the server's own `avlm_pb2.ServerMessage`s; a call that ends with an error
status raises `AvlmError`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from typing import Iterable, Iterator, Optional, Sequence, Tuple

import grpc

from . import avlm_pb2 as pb
from . import avlm_pb2_grpc
from .requests import (
    MIN_CHUNK_BYTES,
    Options,
    Pacer,
    byte_rate,
    client_messages,
    pcm_byte_rate,
    raw_pcm_input,
    read_chunks,
    stream_config,
)

# The server's own limit is larger; the client only has to take its answers.
_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]


class AvlmError(Exception):
    """A call that failed: `code` is the `grpc.StatusCode` (UNAVAILABLE when
    the server cannot be reached), `details` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError) -> "AvlmError":
        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        details = err.details() if hasattr(err, "details") else str(err)
        return cls(code or grpc.StatusCode.UNKNOWN, details or "")


def parse_target(target: str) -> Tuple[str, Optional[bool]]:
    """`host:port`, `http://host:port` or `https://host:port` as grpc's
    `host:port` and whether the scheme asks for TLS (None: no scheme)."""
    for scheme, tls in (("https://", True), ("http://", False)):
        if target.startswith(scheme):
            return target[len(scheme):].rstrip("/"), tls
    return target, None


def channel(
    target: str,
    ca: Optional[str] = None,
    client_cert: Optional[str] = None,
    client_key: Optional[str] = None,
) -> grpc.Channel:
    """A channel to `target`. TLS when the target says `https://` or a CA
    file or client certificate is given (as `avlm serve --tls-cert`
    expects); the system's roots are trusted when no CA is given."""
    address, tls = parse_target(target)
    if tls is None:
        tls = bool(ca or client_cert)
    if not tls:
        return grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
    if bool(client_cert) != bool(client_key):
        raise ValueError("client_cert and client_key go together")

    def read(path: Optional[str]) -> Optional[bytes]:
        if path is None:
            return None
        with open(path, "rb") as f:
            return f.read()

    creds = grpc.ssl_channel_credentials(
        root_certificates=read(ca), private_key=read(client_key), certificate_chain=read(client_cert)
    )
    return grpc.secure_channel(address, creds, options=_CHANNEL_OPTIONS)


def metadata(token: Optional[str]) -> Sequence[Tuple[str, str]]:
    """Call metadata carrying `token` as `avlm serve --auth-token-file` expects."""
    return [("authorization", f"Bearer {token}")] if token else []


def stream_messages(
    target: str,
    messages: Iterable[pb.ClientMessage],
    token: Optional[str] = None,
    ca: Optional[str] = None,
    client_cert: Optional[str] = None,
    client_key: Optional[str] = None,
) -> Iterator[pb.ServerMessage]:
    """The Stream call with exactly `messages` (config first): yields every
    `ServerMessage` as it arrives, returns when the server ends the call with
    OK, raises `AvlmError` otherwise. Stopping the iteration early cancels
    the call."""
    with channel(target, ca, client_cert, client_key) as chan:
        call = avlm_pb2_grpc.AvlmStub(chan).Stream(iter(messages), metadata=metadata(token))
        try:
            for msg in call:
                yield msg
        except grpc.RpcError as err:
            raise AvlmError.from_rpc_error(err) from None
        finally:
            call.cancel()


def stream_chunks(
    target: str,
    chunks: Iterable[bytes],
    task: str = "transcribe",
    partials: bool = False,
    captions: bool = False,
    rate: Optional[float] = None,
    token: Optional[str] = None,
    ca: Optional[str] = None,
    options: Options = None,
    modalities: Optional[str] = None,
    format_hint: str = "",
    raw_pcm: Optional[pb.RawPcmInput] = None,
    **connection,
) -> Iterator[pb.ServerMessage]:
    """Streams container bytes (or `raw_pcm` audio) from any iterator of byte
    strings, paced at `rate` bytes a second when given (a live source such
    as a microphone paces itself: leave it None)."""
    config = stream_config(task, partials, captions, modalities, options, format_hint, raw_pcm)
    pacer = Pacer(rate) if rate else None
    return stream_messages(target, client_messages(config, chunks, pacer), token, ca, **connection)


def media_duration(path: str) -> Optional[float]:
    """The container's duration in seconds as ffprobe reads it, or None when
    ffprobe is missing or cannot tell."""
    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        return None
    try:
        out = subprocess.run(
            [ffprobe, "-v", "error", "-show_entries", "format=duration", "-of", "json", path],
            capture_output=True,
            check=True,
            timeout=30,
        ).stdout
        return float(json.loads(out)["format"]["duration"])
    except (subprocess.SubprocessError, OSError, KeyError, ValueError, TypeError):
        return None


def realtime_rate(path: str) -> Optional[float]:
    """The average byte rate `path` plays at (size / ffprobe's duration), or
    None with a warning when its duration cannot be found."""
    rate = byte_rate(os.path.getsize(path), media_duration(path))
    if rate is None:
        warnings.warn(f"{path}: duration unknown (is ffprobe installed?): sending it unpaced", stacklevel=3)
    return rate


def stream_file(
    target: str,
    path: str,
    task: str = "transcribe",
    partials: bool = False,
    captions: bool = False,
    realtime: bool = False,
    chunk_bytes: int = 16384,
    token: Optional[str] = None,
    ca: Optional[str] = None,
    options: Options = None,
    modalities: Optional[str] = None,
    format_hint: str = "",
    **connection,
) -> Iterator[pb.ServerMessage]:
    """Streams the media file at `path` (`-` for stdin) to the server at
    `target` and yields the server's messages as they come (see
    `avlm_pb2.ServerMessage`: `msg.WhichOneof("msg")` is "ready", "segment",
    "stats", "partial", "final" or "caption").

    `realtime` sends the file at its average byte rate (from ffprobe's
    duration; unpaced with a warning when that is unknown, and always for
    stdin). `options` is an `avlm_pb2.StreamOptions` or a mapping of its
    fields. `connection` takes `client_cert` and `client_key`. Raises `AvlmError` when the call fails, `OSError`
    when the file cannot be read.
    """
    if chunk_bytes < MIN_CHUNK_BYTES:
        raise ValueError(f"chunk_bytes must be at least {MIN_CHUNK_BYTES}")
    if path == "-":
        file = sys.stdin.buffer
        if realtime:
            warnings.warn("stdin cannot be paced: sending it as it comes", stacklevel=2)
        rate = None
    else:
        file = open(path, "rb")
        rate = realtime_rate(path) if realtime else None

    def chunks() -> Iterator[bytes]:
        try:
            yield from read_chunks(file, chunk_bytes)
        except ValueError:
            if not file.closed:
                raise
            # the call ended and closed the file while grpc's sender read on

    try:
        yield from stream_chunks(
            target, chunks(), task, partials, captions, rate, token, ca, options, modalities, format_hint,
            **connection,
        )
    finally:
        if file is not sys.stdin.buffer:
            file.close()


def stream_pcm(
    target: str,
    chunks: Iterable[bytes],
    sample_rate: int = 16000,
    channels: int = 1,
    sample_format: str = "s16le",
    task: str = "transcribe",
    partials: bool = False,
    realtime: bool = False,
    token: Optional[str] = None,
    ca: Optional[str] = None,
    options: Options = None,
    **connection,
) -> Iterator[pb.ServerMessage]:
    """Streams headerless interleaved PCM (`s16le` or `f32le`) from an
    iterator of byte strings, e.g. `microphone()`. `realtime` paces it by
    its sample rate, for recorded audio; a live source needs no pacing."""
    rate = pcm_byte_rate(sample_rate, channels, sample_format) if realtime else None
    pcm = raw_pcm_input(sample_rate, channels, sample_format)
    yield from stream_chunks(
        target, chunks, task, partials, False, rate, token, ca, options, "audio", "", pcm, **connection
    )


def get_info(
    target: str,
    token: Optional[str] = None,
    ca: Optional[str] = None,
    timeout_s: float = 10.0,
    **connection,
) -> pb.ServerInfo:
    """The server's version, models, limits and active sessions."""
    with channel(target, ca, **connection) as chan:
        try:
            return avlm_pb2_grpc.AvlmStub(chan).GetInfo(
                pb.GetInfoRequest(), metadata=metadata(token), timeout=timeout_s
            )
        except grpc.RpcError as err:
            raise AvlmError.from_rpc_error(err) from None
