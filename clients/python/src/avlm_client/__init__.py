"""A Python client for avlm, the live audio-visual speech server.

`stream_file` (and `stream_pcm`, `stream_chunks`) yield the server's
`avlm_pb2.ServerMessage`s as they arrive; `get_info` asks what it runs; a
call that fails raises `AvlmError` with its gRPC status code and message.
"""

from . import avlm_pb2, avlm_pb2_grpc
from .client import (
    AvlmError,
    channel,
    get_info,
    media_duration,
    stream_chunks,
    stream_file,
    stream_messages,
    stream_pcm,
)
from .mic import microphone
from .printing import human, to_dict
from .requests import Pacer, client_messages, stream_config

__version__ = "0.1.0"

__all__ = [
    "AvlmError",
    "Pacer",
    "avlm_pb2",
    "avlm_pb2_grpc",
    "channel",
    "client_messages",
    "get_info",
    "human",
    "media_duration",
    "microphone",
    "stream_chunks",
    "stream_config",
    "stream_file",
    "stream_messages",
    "stream_pcm",
    "to_dict",
]
