"""Tests of the sentence pool a machine without WordNet and fortunes reads (AVLM_SENTENCES):
what text_corpus.write saves is what sentences() gives back there, and files that are not such a
pool are refused with the file named rather than training on something else."""
from __future__ import annotations

import gzip
import json
import os
import sys
import tempfile
import unittest
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import text_corpus as T  # noqa: E402

POOL = [{"text": "A cold wind blew.", "target": "a cold wind blew", "source": "wordnet:noun"},
        {"text": "He ran for the bus!", "target": "he ran for the bus", "source": "fortunes:people"}]


class WrittenPool(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.addCleanup(self.dir.cleanup)
        env = mock.patch.dict(os.environ)
        env.start()
        self.addCleanup(env.stop)
        os.environ.pop("AVLM_SENTENCES", None)

    def path(self, name: str) -> str:
        return os.path.join(self.dir.name, name)

    def test_what_is_written_is_read_back_plain_and_gzipped(self):
        for name in ("pool.json", "pool.json.gz"):
            with mock.patch.object(T, "_build", return_value=POOL):
                self.assertEqual(T.write(self.path(name)), POOL)
            os.environ["AVLM_SENTENCES"] = self.path(name)
            self.assertEqual(T.sentences(), POOL)
        with gzip.open(self.path("pool.json.gz"), "rt") as f:   # really compressed
            self.assertEqual(json.load(f)["sentences"], POOL)

    def test_an_empty_build_writes_nothing(self):
        with mock.patch.object(T, "_build", return_value=[]):
            with self.assertRaises(SystemExit) as e:
                T.write(self.path("pool.json"))
        self.assertIn("wordnet-base", str(e.exception))
        self.assertFalse(os.path.exists(self.path("pool.json")))

    def refused(self, content: str, *needles: str):
        p = self.path("bad.json")
        with open(p, "w") as f:
            f.write(content)
        os.environ["AVLM_SENTENCES"] = p
        with self.assertRaises(SystemExit) as e:
            T.sentences()
        for n in (p,) + needles:
            self.assertIn(n, str(e.exception))

    def test_files_that_are_not_a_pool_are_refused(self):
        self.refused("not json", "cannot read it as JSON")
        self.refused(json.dumps(POOL), "not a sentence pool")
        self.refused(json.dumps({"min_words": 4, "max_words": 24, "sentences": []}), "no sentences")
        self.refused(json.dumps({"min_words": 4, "max_words": 24, "sentences": [{"text": "x"}]}), "entry 0")
        self.refused(json.dumps({"min_words": 4, "max_words": 24, "sentences": POOL + [{"text": "a", "target": "",
                                                                                         "source": "s"}]}), "entry 2")

    def test_a_pool_of_other_length_limits_is_refused(self):
        self.refused(json.dumps({"min_words": 2, "max_words": 24, "sentences": POOL}), "2-24", "4-24")

    def test_a_missing_file_is_named(self):
        os.environ["AVLM_SENTENCES"] = self.path("absent.json")
        with self.assertRaises(SystemExit) as e:
            T.sentences()
        self.assertIn("absent.json", str(e.exception))


if __name__ == "__main__":
    unittest.main()
