"""The client's side of a Stream call as plain Python: the config message,
media cut into chunks with sequence numbers from 0, the end-of-stream control
at the end, and the pacing that makes a file arrive at its own speed.

Nothing here touches the network, so it is tested on its own.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Iterator, Mapping, Optional, Union

from . import avlm_pb2 as pb

TASKS = {
    "segments": pb.TASK_SEGMENTS,
    "transcribe": pb.TASK_TRANSCRIBE,
    "caption": pb.TASK_CAPTION,
}
MODALITIES = {
    "audio": pb.MODALITIES_AUDIO,
    "video": pb.MODALITIES_VIDEO,
    "av": pb.MODALITIES_AUDIO_VIDEO,
}
SAMPLE_FORMATS = {
    "s16le": (pb.SAMPLE_FORMAT_S16LE, 2),
    "f32le": (pb.SAMPLE_FORMAT_F32LE, 4),
}

# A smaller chunk makes HTTP/2 frames so small that servers may count them
# as a flood (the same floor as `avlm stream --chunk-bytes`).
MIN_CHUNK_BYTES = 256

Options = Union[None, pb.StreamOptions, Mapping[str, object]]


def stream_config(
    task: str = "transcribe",
    partials: bool = False,
    captions: bool = False,
    modalities: Optional[str] = None,
    options: Options = None,
    format_hint: str = "",
    raw_pcm: Optional[pb.RawPcmInput] = None,
) -> pb.StreamConfig:
    """The `StreamConfig` for these settings.

    `options` is a `StreamOptions` message or a mapping of its field names
    (`{"vad_threshold": 0.6}`); `partials` and `captions` are set on top of
    it. Without `modalities`, a caption task watches the video alone and
    `captions` next to another task takes audio and video, as `avlm stream`
    chooses.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, not {task!r}")
    if modalities is None:
        modalities = "video" if task == "caption" else "av" if captions else "audio"
    if modalities not in MODALITIES:
        raise ValueError(f"modalities must be one of {sorted(MODALITIES)}, not {modalities!r}")
    if isinstance(options, pb.StreamOptions):
        opts = pb.StreamOptions()
        opts.CopyFrom(options)
    else:
        opts = pb.StreamOptions(**dict(options or {}))
    if partials:
        opts.partial_results = True
    if captions:
        opts.captions = True
    config = pb.StreamConfig(task=TASKS[task], modalities=MODALITIES[modalities], options=opts)
    if raw_pcm is not None:
        config.raw_pcm.CopyFrom(raw_pcm)
    else:
        config.container.CopyFrom(pb.ContainerInput(format_hint=format_hint))
    return config


def raw_pcm_input(sample_rate: int, channels: int = 1, sample_format: str = "s16le") -> pb.RawPcmInput:
    """A `RawPcmInput` for headerless interleaved PCM."""
    if sample_format not in SAMPLE_FORMATS:
        raise ValueError(f"sample_format must be one of {sorted(SAMPLE_FORMATS)}, not {sample_format!r}")
    return pb.RawPcmInput(
        sample_format=SAMPLE_FORMATS[sample_format][0], sample_rate=sample_rate, channels=channels
    )


def pcm_byte_rate(sample_rate: int, channels: int = 1, sample_format: str = "s16le") -> float:
    """Bytes a second of headerless PCM: what real time means for it."""
    return float(sample_rate * channels * SAMPLE_FORMATS[sample_format][1])


def chunked(reads: Iterable[bytes], chunk_bytes: int) -> Iterator[bytes]:
    """Regroups byte strings of any sizes into chunks of exactly `chunk_bytes`
    (the last may be shorter); empty reads are skipped."""
    if chunk_bytes < 1:
        raise ValueError("chunk_bytes must be positive")
    pending = bytearray()
    for data in reads:
        pending += data
        while len(pending) >= chunk_bytes:
            yield bytes(pending[:chunk_bytes])
            del pending[:chunk_bytes]
    if pending:
        yield bytes(pending)


def read_chunks(file, chunk_bytes: int) -> Iterator[bytes]:
    """`file` (opened in binary mode) in chunks of `chunk_bytes`; a pipe's
    short reads are gathered into full chunks."""
    reader = file.read1 if hasattr(file, "read1") else file.read
    return chunked(iter(lambda: reader(chunk_bytes), b""), chunk_bytes)


def byte_rate(size_bytes: int, duration_s: Optional[float]) -> Optional[float]:
    """A file's average byte rate, or None when its duration is unknown or 0."""
    if not duration_s or duration_s <= 0 or size_bytes <= 0:
        return None
    return size_bytes / duration_s


class Pacer:
    """Holds each chunk back until the media before it has had time to play:
    the chunk starting at byte `offset` goes out `offset / rate` seconds
    after the first, so a file arrives as fast as it would be captured.

    `clock` and `sleep` are injectable for tests.
    """

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._start: Optional[float] = None
        self._sent = 0

    def delay(self, now: float) -> float:
        """Seconds to wait at `now` before the next chunk may go."""
        if self._start is None:
            return 0.0
        return max(0.0, self._start + self._sent / self.rate - now)

    def wait(self, nbytes: int) -> None:
        """Waits until a chunk of `nbytes` may go, and counts it as sent."""
        now = self._clock()
        if self._start is None:
            self._start = now
        wait = self.delay(now)
        if wait > 0:
            self._sleep(wait)
        self._sent += nbytes


def client_messages(
    config: pb.StreamConfig,
    chunks: Iterable[bytes],
    pacer: Optional[Pacer] = None,
) -> Iterator[pb.ClientMessage]:
    """The messages of one Stream call: the config, each chunk as a
    `MediaChunk` with `seq` 0, 1, 2, ..., then `ACTION_END_OF_STREAM`."""
    yield pb.ClientMessage(config=config)
    seq = 0
    for data in chunks:
        if not data:
            continue
        if pacer is not None:
            pacer.wait(len(data))
        yield pb.ClientMessage(media=pb.MediaChunk(data=data, seq=seq))
        seq += 1
    yield pb.ClientMessage(control=pb.Control(action=pb.Control.ACTION_END_OF_STREAM))
