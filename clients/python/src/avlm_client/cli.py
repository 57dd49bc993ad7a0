"""`avlm-client`: streams a file, stdin or the microphone to an avlm server
and prints its events as they come, like `avlm stream` does.

Exit codes follow `avlm stream`: 0 when the server ends the stream with OK,
10 + the gRPC status code when it ends it with an error (13 for
INVALID_ARGUMENT), 3 when it cannot connect, 4 when the input cannot be read,
2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import threading
import warnings
from typing import Iterator, List, Optional

import grpc

from . import client
from .printing import Printer, error_dict, to_dict

EXIT_CONNECT = 3
EXIT_INPUT = 4


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="avlm-client",
        description="Stream media to an avlm server and print partials, finals and captions as they come.",
    )
    p.add_argument("input", nargs="?", help="a media file, or - for stdin (omit with --mic)")
    p.add_argument("--mic", action="store_true", help="stream the microphone (needs the sounddevice package)")
    p.add_argument("--server", default=os.environ.get("AVLM_SERVER", "127.0.0.1:50051"),
                   help="host:port, http://host:port or https://host:port (env AVLM_SERVER; default %(default)s)")
    p.add_argument("--task", choices=["segments", "transcribe", "caption"], default="transcribe")
    p.add_argument("--partials", action="store_true", help="ask for partial transcripts")
    p.add_argument("--captions", action="store_true", help="caption the video next to the transcription")
    p.add_argument("--modalities", choices=["audio", "video", "av"],
                   help="default: audio; video for --task caption; av with --captions")
    p.add_argument("--realtime", action="store_true",
                   help="send a file at its own pace (its average byte rate, from ffprobe's duration)")
    p.add_argument("--chunk-bytes", type=int, default=16384, help="bytes per message (default %(default)s)")
    p.add_argument("--format-hint", default="", help="FFmpeg demuxer name when probing is not enough")
    p.add_argument("--json", action="store_true", help="one JSON object per line, as `avlm stream --json`")
    p.add_argument("--token", default=os.environ.get("AVLM_TOKEN"),
                   help="bearer token (env AVLM_TOKEN)")
    p.add_argument("--ca", default=os.environ.get("AVLM_CA"),
                   help="CA certificate (PEM) of a TLS server; implies TLS (env AVLM_CA)")
    p.add_argument("--client-cert", default=os.environ.get("AVLM_CLIENT_CERT"))
    p.add_argument("--client-key", default=os.environ.get("AVLM_CLIENT_KEY"))
    p.add_argument("--mic-rate", type=int, default=16000, help="microphone sample rate (default %(default)s)")
    p.add_argument("--info", action="store_true", help="print the server's GetInfo as JSON and exit")
    return p


def _mic_chunks(rate: int) -> Iterator[bytes]:
    """The microphone until Ctrl-C: the first one ends the capture, so the
    stream ends normally and the open utterance still gets its final; a
    second one quits at once."""
    from .mic import microphone

    stop = threading.Event()

    def on_interrupt(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("stopping: finishing the transcript (Ctrl-C again to quit)", file=sys.stderr)

    chunks = microphone(sample_rate=rate, stop=stop)
    signal.signal(signal.SIGINT, on_interrupt)
    return chunks


def _fail(code: grpc.StatusCode, message: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps(error_dict(code, message)), flush=True)
    print(f"error: {code.name}: {message}", file=sys.stderr)


def exit_code(err: client.AvlmError, connected: bool) -> int:
    """10 + the status code, or 3 when the server was never reached."""
    if err.code == grpc.StatusCode.UNAVAILABLE and not connected:
        return EXIT_CONNECT
    return 10 + err.code.value[0]


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    connection = {"client_cert": args.client_cert, "client_key": args.client_key}
    if args.info:
        try:
            info = client.get_info(args.server, args.token, args.ca, **connection)
        except client.AvlmError as err:
            _fail(err.code, err.details, args.json)
            return exit_code(err, False)
        from google.protobuf import json_format

        print(json_format.MessageToJson(info, preserving_proto_field_name=True))
        return 0
    if args.mic == (args.input is not None):
        parser().error("give one INPUT (a file or -), or --mic")
    if args.chunk_bytes < client.MIN_CHUNK_BYTES:
        parser().error(f"--chunk-bytes must be at least {client.MIN_CHUNK_BYTES}")
    if args.input not in (None, "-") and not os.path.isfile(args.input):
        print(f"error: {args.input}: no such file", file=sys.stderr)
        return EXIT_INPUT
    warnings.simplefilter("always")
    warnings.showwarning = lambda message, *rest: print(f"warning: {message}", file=sys.stderr)

    common = dict(task=args.task, partials=args.partials, token=args.token, ca=args.ca, **connection)
    if args.mic:
        try:
            chunks = _mic_chunks(args.mic_rate)
        except RuntimeError as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_INPUT
        events = client.stream_pcm(args.server, chunks, sample_rate=args.mic_rate, **common)
    else:
        events = client.stream_file(
            args.server, args.input, captions=args.captions, realtime=args.realtime,
            chunk_bytes=args.chunk_bytes, modalities=args.modalities, format_hint=args.format_hint, **common,
        )

    tty = sys.stdout.isatty()
    colour = tty and not os.environ.get("NO_COLOR")
    printer = Printer(sys.stdout, colour=colour, redraw=tty, width=shutil.get_terminal_size().columns)
    connected = False
    try:
        for msg in events:
            connected = True
            if args.json:
                print(json.dumps(to_dict(msg), ensure_ascii=False), flush=True)
            else:
                printer.write(msg)
    except client.AvlmError as err:
        printer.close()
        _fail(err.code, err.details, args.json)
        return exit_code(err, connected)
    except OSError as err:
        printer.close()
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        printer.close()
        return 130
    printer.close()
    return 0


def run() -> None:
    sys.exit(main())
