"""The microphone as an iterator of 16-bit PCM chunks, through the optional
`sounddevice` package (PortAudio); imported only when a microphone is used.
Install it with `pip install "avlm-client[mic]"`.
"""

from __future__ import annotations

import queue
from typing import Iterator, Optional


def microphone(
    sample_rate: int = 16000,
    channels: int = 1,
    block_ms: int = 100,
    device: Optional[object] = None,
    stop=None,
) -> Iterator[bytes]:
    """Yields s16le PCM from the default (or the named) input device, one
    block of `block_ms` at a time, until `stop` (a `threading.Event`) is set
    or the iteration stops. Pass it to `stream_pcm` with the same
    `sample_rate` and `channels`. Raises RuntimeError at once (not on
    iteration, which gRPC does on a thread of its own) when sounddevice is
    not installed."""
    try:
        import sounddevice
    except ImportError as err:  # PortAudio's binding is an optional extra
        raise RuntimeError(
            'the microphone needs the sounddevice package: pip install "avlm-client[mic]"'
        ) from err
    return _blocks(sounddevice, sample_rate, channels, block_ms, device, stop)


def _blocks(sounddevice, sample_rate, channels, block_ms, device, stop) -> Iterator[bytes]:
    blocks: "queue.Queue[bytes]" = queue.Queue(maxsize=50)

    def on_block(data, frames, time_info, status):
        try:
            blocks.put_nowait(bytes(data))
        except queue.Full:  # the network fell behind by seconds: drop, don't block PortAudio
            pass

    with sounddevice.RawInputStream(
        samplerate=sample_rate,
        channels=channels,
        dtype="int16",
        blocksize=sample_rate * block_ms // 1000,
        device=device,
        callback=on_block,
    ):
        while stop is None or not stop.is_set():
            try:
                yield blocks.get(timeout=0.5)
            except queue.Empty:
                continue
