"""The microphone helper, with a stand-in for the sounddevice package."""

import os
import sys
import threading
import types
import unittest
from unittest import mock

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from avlm_client.mic import microphone  # noqa: E402


class FakeStream:
    """Calls back with three blocks on entry, as PortAudio would from its thread."""

    opened = {}

    def __init__(self, **kwargs):
        FakeStream.opened = kwargs

    def __enter__(self):
        for i in range(3):
            self.opened["callback"](bytes([i]) * 4, 2, None, None)
        return self

    def __exit__(self, *exc):
        return False


class Microphone(unittest.TestCase):
    def test_blocks_in_order_until_stopped(self):
        fake = types.SimpleNamespace(RawInputStream=FakeStream)
        stop = threading.Event()
        with mock.patch.dict(sys.modules, {"sounddevice": fake}):
            got = []
            for block in microphone(sample_rate=8000, block_ms=50, stop=stop):
                got.append(block)
                if len(got) == 3:
                    stop.set()
        self.assertEqual(got, [b"\0" * 4, b"\1" * 4, b"\2" * 4])
        self.assertEqual(FakeStream.opened["blocksize"], 400)
        self.assertEqual(FakeStream.opened["dtype"], "int16")

    def test_missing_sounddevice_fails_at_the_call(self):
        with mock.patch.dict(sys.modules, {"sounddevice": None}):
            with self.assertRaises(RuntimeError) as err:
                microphone()
        self.assertIn("sounddevice", str(err.exception))


if __name__ == "__main__":
    unittest.main()
