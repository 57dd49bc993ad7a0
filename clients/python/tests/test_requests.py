"""The pure parts of a Stream call: config, chunking, sequence numbers,
end of stream, pacing arithmetic."""

import io
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from avlm_client import avlm_pb2 as pb  # noqa: E402
from avlm_client.requests import (  # noqa: E402
    Pacer,
    byte_rate,
    chunked,
    client_messages,
    pcm_byte_rate,
    raw_pcm_input,
    read_chunks,
    stream_config,
)


class Chunking(unittest.TestCase):
    def test_regroups_reads_of_any_size_into_full_chunks(self):
        reads = [b"ab", b"", b"cdefg", b"h", b"ijklmnopq"]
        self.assertEqual(list(chunked(reads, 4)), [b"abcd", b"efgh", b"ijkl", b"mnop", b"q"])

    def test_exact_multiple_has_no_empty_tail(self):
        self.assertEqual(list(chunked([b"abcdef"], 3)), [b"abc", b"def"])

    def test_nothing_in_nothing_out(self):
        self.assertEqual(list(chunked([], 3)), [])

    def test_file_chunks_join_to_the_file(self):
        data = os.urandom(100_003)
        chunks = list(read_chunks(io.BytesIO(data), 16384))
        self.assertEqual(b"".join(chunks), data)
        self.assertTrue(all(len(c) == 16384 for c in chunks[:-1]))
        self.assertEqual(len(chunks), 7)

    def test_short_pipe_reads_still_make_full_chunks(self):
        class Pipe:
            def __init__(self, data):
                self.data = data

            def read1(self, n):
                out, self.data = self.data[:min(n, 1000)], self.data[min(n, 1000):]
                return out

        chunks = list(read_chunks(Pipe(b"x" * 5000), 2048))
        self.assertEqual([len(c) for c in chunks], [2048, 2048, 904])


class Messages(unittest.TestCase):
    def test_config_then_seqs_from_zero_then_end_of_stream(self):
        config = stream_config("transcribe")
        msgs = list(client_messages(config, [b"a", b"", b"b", b"c"]))
        self.assertEqual([m.WhichOneof("msg") for m in msgs], ["config", "media", "media", "media", "control"])
        self.assertEqual(msgs[0].config, config)
        self.assertEqual([m.media.seq for m in msgs[1:4]], [0, 1, 2])
        self.assertEqual([m.media.data for m in msgs[1:4]], [b"a", b"b", b"c"])
        self.assertEqual(msgs[-1].control.action, pb.Control.ACTION_END_OF_STREAM)

    def test_an_empty_source_still_ends_the_stream(self):
        msgs = list(client_messages(stream_config(), []))
        self.assertEqual([m.WhichOneof("msg") for m in msgs], ["config", "control"])


class Config(unittest.TestCase):
    def test_transcribe_with_partials_and_options(self):
        c = stream_config("transcribe", partials=True, options={"vad_threshold": 0.25, "min_silence_ms": 300})
        self.assertEqual(c.task, pb.TASK_TRANSCRIBE)
        self.assertEqual(c.modalities, pb.MODALITIES_AUDIO)
        self.assertEqual(c.WhichOneof("input"), "container")
        self.assertTrue(c.options.partial_results)
        self.assertFalse(c.options.HasField("captions"))
        self.assertAlmostEqual(c.options.vad_threshold, 0.25)
        self.assertEqual(c.options.min_silence_ms, 300)

    def test_modalities_follow_avlm_stream(self):
        self.assertEqual(stream_config("caption").modalities, pb.MODALITIES_VIDEO)
        self.assertEqual(stream_config("transcribe", captions=True).modalities, pb.MODALITIES_AUDIO_VIDEO)
        self.assertTrue(stream_config("transcribe", captions=True).options.captions)
        self.assertEqual(stream_config("segments", modalities="av").modalities, pb.MODALITIES_AUDIO_VIDEO)

    def test_options_message_is_copied_not_changed(self):
        opts = pb.StreamOptions(min_speech_ms=100)
        c = stream_config("transcribe", partials=True, options=opts)
        self.assertFalse(opts.HasField("partial_results"))
        self.assertEqual(c.options.min_speech_ms, 100)

    def test_raw_pcm(self):
        c = stream_config(raw_pcm=raw_pcm_input(8000, 2, "f32le"))
        self.assertEqual(c.WhichOneof("input"), "raw_pcm")
        self.assertEqual(c.raw_pcm.sample_format, pb.SAMPLE_FORMAT_F32LE)
        self.assertEqual((c.raw_pcm.sample_rate, c.raw_pcm.channels), (8000, 2))

    def test_unknown_names_are_refused(self):
        with self.assertRaises(ValueError):
            stream_config("translate")
        with self.assertRaises(ValueError):
            stream_config(modalities="smell")
        with self.assertRaises(ValueError):
            raw_pcm_input(16000, 1, "u8")


class Pacing(unittest.TestCase):
    def test_byte_rates(self):
        self.assertEqual(byte_rate(32000, 2.0), 16000.0)
        self.assertIsNone(byte_rate(32000, None))
        self.assertIsNone(byte_rate(32000, 0.0))
        self.assertIsNone(byte_rate(0, 3.0))
        self.assertEqual(pcm_byte_rate(16000, 1, "s16le"), 32000.0)
        self.assertEqual(pcm_byte_rate(48000, 2, "f32le"), 384000.0)

    def test_each_chunk_waits_for_the_media_before_it(self):
        now = [100.0]
        slept = []

        def sleep(s):
            slept.append(s)
            now[0] += s

        pacer = Pacer(1000.0, clock=lambda: now[0], sleep=sleep)
        pacer.wait(500)  # first chunk: at once
        self.assertEqual(slept, [])
        pacer.wait(500)  # 500 bytes played at 1000 B/s: 0.5 s after the start
        self.assertAlmostEqual(now[0], 100.5)
        now[0] += 0.2  # the sender was slow: the next wait is shorter
        pacer.wait(1000)
        self.assertAlmostEqual(now[0], 101.0)
        self.assertAlmostEqual(slept[-1], 0.3)
        now[0] += 5.0  # far behind: no waiting, no catching up by bursting past real time
        pacer.wait(10)
        self.assertEqual(len(slept), 2)

    def test_a_paced_file_takes_its_duration(self):
        now = [0.0]

        def sleep(s):
            now[0] += s

        data = b"x" * 48000  # 3 s at 16000 B/s, sent in 4096-byte chunks
        pacer = Pacer(16000.0, clock=lambda: now[0], sleep=sleep)
        msgs = list(client_messages(stream_config(), chunked([data], 4096), pacer))
        # the last chunk starts at byte 45056: 2.816 s in
        self.assertAlmostEqual(now[0], 45056 / 16000)
        self.assertEqual(len(msgs), 2 + 12)

    def test_rate_must_be_positive(self):
        with self.assertRaises(ValueError):
            Pacer(0)


if __name__ == "__main__":
    unittest.main()
