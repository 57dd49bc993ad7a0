"""The text and JSON layouts of server messages."""

import io
import json
import os
import sys
import unittest

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from avlm_client import avlm_pb2 as pb  # noqa: E402
from avlm_client.cli import exit_code  # noqa: E402
from avlm_client.client import AvlmError, parse_target  # noqa: E402
from avlm_client.printing import Printer, error_dict, human, to_dict  # noqa: E402


def final(i, a, b, text):
    return pb.ServerMessage(final=pb.Final(segment_id=i, start_s=a, end_s=b, text=text))


def partial(i, stable, unstable):
    return pb.ServerMessage(partial=pb.Partial(segment_id=i, stable_text=stable, unstable_text=unstable))


class Text(unittest.TestCase):
    def test_lines_match_avlm_stream(self):
        self.assertEqual(
            human(final(0, 0.8, 4.45, "the quick brown fox")),
            "final     #0       0.80s –     4.45s  the quick brown fox",
        )
        self.assertEqual(human(partial(12, "the quick", " brown")), "partial   #12  the quick brown")
        self.assertEqual(human(partial(1, "a", " b"), colour=True), "partial   #1   a\x1b[2m b\x1b[0m")
        self.assertEqual(
            human(pb.ServerMessage(caption=pb.Caption(text="A baby.", media_time_s=3.5))),
            "caption       3.50s  A baby.",
        )
        seg = pb.Segment(segment_id=2, kind=pb.Segment.KIND_SPEECH_END, start_s=1, end_s=2.5, end_reason="silence")
        self.assertEqual(
            human(pb.ServerMessage(segment=seg)), "segment   #2       1.00s –     2.50s  (1.50s, ended by silence)"
        )

    def test_pipe_prints_every_partial_on_its_own_line(self):
        out = io.StringIO()
        p = Printer(out)
        for m in (partial(0, "a", ""), partial(0, "a b", ""), final(0, 0, 1, "a b c")):
            p.write(m)
        p.close()
        self.assertEqual(out.getvalue().count("\n"), 3)
        self.assertNotIn("\r", out.getvalue())

    def test_terminal_redraws_partials_in_place(self):
        out = io.StringIO()
        p = Printer(out, redraw=True, width=40)
        p.write(partial(0, "a", ""))
        p.write(partial(0, "a " + "long " * 20, ""))
        p.write(final(0, 0, 1, "done"))
        p.close()
        text = out.getvalue()
        self.assertEqual(text.count("\n"), 1)
        self.assertEqual(text.count("\r\x1b[2K"), 2)
        self.assertTrue(text.endswith("done\n"))
        partials = text.split("\r\x1b[2K")[:-1]
        self.assertLessEqual(max(len(s) for s in partials), 40)


class Json(unittest.TestCase):
    def test_final_fields(self):
        d = to_dict(final(3, 1.23456, 2.0, "hi"))
        self.assertEqual(d["type"], "final")
        self.assertEqual((d["segment_id"], d["start_s"], d["text"]), (3, 1.235, "hi"))
        json.dumps(d)

    def test_ready_with_options(self):
        cfg = pb.StreamConfig(task=pb.TASK_TRANSCRIBE, options=pb.StreamOptions(vad_threshold=0.5))
        d = to_dict(pb.ServerMessage(ready=pb.Ready(session_id="s", config=cfg, model=pb.ModelInfo(name="m"))))
        self.assertEqual((d["task"], d["model"]), ("TASK_TRANSCRIBE", "m"))
        self.assertEqual(d["options"]["vad_threshold"], 0.5)
        self.assertIsNone(d["options"]["min_silence_ms"])

    def test_error_code_spelled_as_avlm_stream(self):
        self.assertEqual(error_dict(grpc.StatusCode.INVALID_ARGUMENT, "x")["code"], "InvalidArgument")


class Errors(unittest.TestCase):
    def test_exit_codes(self):
        self.assertEqual(exit_code(AvlmError(grpc.StatusCode.INVALID_ARGUMENT, ""), True), 13)
        self.assertEqual(exit_code(AvlmError(grpc.StatusCode.UNAVAILABLE, ""), False), 3)
        self.assertEqual(exit_code(AvlmError(grpc.StatusCode.UNAVAILABLE, ""), True), 24)

    def test_targets(self):
        self.assertEqual(parse_target("h:1"), ("h:1", None))
        self.assertEqual(parse_target("http://h:1/"), ("h:1", False))
        self.assertEqual(parse_target("https://h:1"), ("h:1", True))


if __name__ == "__main__":
    unittest.main()
