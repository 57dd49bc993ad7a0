#!/usr/bin/env python3
"""English sentence pool for synthetic speech, from openly licensed Debian packages.

Sources (install: apt-get install -y wordnet-base fortunes):
  * WordNet 3.0 (Debian `wordnet-base`, WordNet 3.0 licence: free use, copy, modify,
    distribute with the copyright notice): the usage examples quoted in the glosses
    of /usr/share/wordnet/data.{noun,verb,adj,adv}.
  * BSD fortune cookies (Debian `fortunes`, fortune-mod data files, BSD licence as
    stated in /usr/share/doc/fortunes/copyright): /usr/share/games/fortunes/*,
    split into sentences.

Neither source is Jane Austen's "Sense and Sensibility" (the real test clips read
from it); as a belt-and-braces guard every sentence sharing a 5-word run with the
pocketsphinx-testdata transcriptions, or naming its characters, is dropped.

`sentences()` returns a sorted, de-duplicated list of dicts
{"text": what the TTS reads, "target": normalised transcript, "source": ...}.  On a machine
without those packages (the GPU machine), AVLM_SENTENCES names a JSON file of that list, written
here by `python tools/data/text_corpus.py --write FILE` (tools/train/tts_kit.py does).
Target normalisation (also used for WER): lower case, hyphens/slashes -> spaces,
all punctuation but word-internal apostrophes removed, whitespace collapsed.
"""
from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import re
import sys

WORDNET_DIR = "/usr/share/wordnet"
FORTUNE_DIR = "/usr/share/games/fortunes"
TEST_TRANSCRIPTS = [
    "/usr/share/pocketsphinx/test/data/librivox/transcription",
    "/usr/share/pocketsphinx/test/data/cards/cards.transcription",
]
BANNED_WORDS = {"dashwood", "elinor", "marianne", "norland", "willoughby", "brandon", "ferrars", "barton"}
# characters a sentence may contain (TTS text); anything else (digits, symbols, markup) -> drop
_OK = re.compile(r"^[A-Za-z][A-Za-z ,.'?!;:\-]*[A-Za-z.?!']$")
_ACRONYM = re.compile(r"\b[A-Z]{2,}\b|\b[A-Z]\.[A-Z]")


def normalize(text: str) -> str:
    """Transcript normal form used for targets and WER."""
    t = text.lower().replace("\u2019", "'")
    t = re.sub(r"[-/]", " ", t)
    t = re.sub(r"[^a-z' ]", " ", t)
    t = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", t)   # keep only word-internal apostrophes
    return " ".join(t.split())


def _test_ngrams(n: int = 5) -> set:
    grams = set()
    for path in TEST_TRANSCRIPTS:
        if not os.path.exists(path):
            continue
        for line in open(path, encoding="utf-8", errors="replace"):
            line = re.sub(r"\(.*?\)\s*$", "", line).replace("<s>", " ").replace("</s>", " ")
            w = normalize(line).split()
            grams.update(tuple(w[i:i + n]) for i in range(len(w) - n + 1))
    return grams


def _wordnet_examples():
    for pos in ("noun", "verb", "adj", "adv"):
        path = os.path.join(WORDNET_DIR, f"data.{pos}")
        if not os.path.exists(path):
            continue
        with open(path, encoding="latin-1") as f:
            for line in f:
                if line.startswith("  ") or "|" not in line:
                    continue
                gloss = line.split("|", 1)[1]
                for ex in re.findall(r'"([^"]+)"', gloss):
                    yield ex.strip(), f"wordnet:{pos}"


def _fortune_sentences():
    files = sorted(p for p in glob.glob(os.path.join(FORTUNE_DIR, "*"))
                   if os.path.isfile(p) and not p.endswith((".dat", ".u8")) and not os.path.islink(p))
    for path in files:
        name = os.path.basename(path)
        if name in ("ascii-art", "art"):
            continue
        raw = open(path, encoding="latin-1").read()
        for cookie in raw.split("\n%\n"):
            lines = []
            for ln in cookie.split("\n"):
                s = ln.strip()
                if s.startswith("--") or s.startswith("-- ") or re.match(r"^\s*[A-Z][a-z]*:\s", ln):
                    break  # attribution / dialogue speaker labels: stop
                lines.append(s)
            body = " ".join(lines)
            body = re.sub(r"\s+", " ", body).strip()
            for sent in re.split(r"(?<=[.!?])\s+(?=[A-Z])", body):
                yield sent.strip(), f"fortunes:{name}"


def sentences(min_words: int = 4, max_words: int = 24) -> list[dict]:
    if os.environ.get("AVLM_SENTENCES"):
        return _read_written(os.environ["AVLM_SENTENCES"], min_words, max_words)
    return _build(min_words, max_words)


def _read_written(path: str, min_words: int, max_words: int) -> list[dict]:
    """The pool as `--write` saved it, refused if it is not that (or was written with other
    length limits, which would change which sentences are held out)."""
    try:
        with _open(path, "rt") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise SystemExit(f"AVLM_SENTENCES={path}: cannot read it as JSON ({e})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("sentences"), list):
        raise SystemExit(f"AVLM_SENTENCES={path}: not a sentence pool written by text_corpus.py --write")
    if (doc.get("min_words"), doc.get("max_words")) != (min_words, max_words):
        raise SystemExit(f"AVLM_SENTENCES={path} holds {doc.get('min_words')}-{doc.get('max_words')} word "
                         f"sentences; {min_words}-{max_words} were asked for")
    out = doc["sentences"]
    for i, d in enumerate(out):
        if not (isinstance(d, dict) and all(isinstance(d.get(k), str) and d[k] for k in ("text", "target", "source"))):
            raise SystemExit(f"AVLM_SENTENCES={path}: entry {i} is not {{text, target, source}}")
    if not out:
        raise SystemExit(f"AVLM_SENTENCES={path} holds no sentences")
    return out


def write(path: str, min_words: int = 4, max_words: int = 24) -> list[dict]:
    """Saves the pool this machine builds, for AVLM_SENTENCES elsewhere; returns it."""
    pool = _build(min_words, max_words)
    if not pool:
        raise SystemExit("no sentences: apt-get install -y wordnet-base fortunes")
    tmp = path + ".tmp" + (".gz" if path.endswith(".gz") else "")   # keeps _open's choice
    with _open(tmp, "wt") as f:
        json.dump({"min_words": min_words, "max_words": max_words, "sentences": pool}, f)
    os.replace(tmp, path)
    return pool


def _open(path: str, mode: str):
    """A text file, gzip-compressed when its name ends in .gz."""
    if path.endswith(".gz"):
        return gzip.open(path, mode, encoding="utf-8")
    return open(path, mode, encoding="utf-8")


def _build(min_words: int, max_words: int) -> list[dict]:
    test_grams = _test_ngrams()
    seen, out = set(), []
    for text, source in list(_wordnet_examples()) + list(_fortune_sentences()):
        text = text.replace("`", "'").replace("''", '"').strip(' "')
        if not _OK.match(text) or _ACRONYM.search(text):
            continue
        target = normalize(text)
        words = target.split()
        if not (min_words <= len(words) <= max_words):
            continue
        if BANNED_WORDS & set(words):
            continue
        if any(tuple(words[i:i + 5]) in test_grams for i in range(len(words) - 4)):
            continue
        if target in seen:
            continue
        seen.add(target)
        out.append({"text": text, "target": target, "source": source})
    out.sort(key=lambda d: d["target"])
    return out


def is_heldout_sentence(target: str, percent: float) -> bool:
    """Deterministic hash split: held-out sentences are never used for training."""
    h = int(hashlib.sha1(("avlm-heldout:" + target).encode()).hexdigest()[:8], 16)
    return (h % 10000) < percent * 100


if __name__ == "__main__":
    import collections
    import random

    if len(sys.argv) == 3 and sys.argv[1] == "--write":
        print(len(write(sys.argv[2])), "sentences written to", sys.argv[2])
        sys.exit(0)

    s = sentences()
    print(len(s), "sentences;", collections.Counter(d["source"].split(":")[0] for d in s))
    print("words:", sum(len(d["target"].split()) for d in s))
    for d in random.Random(0).sample(s, 25):
        print(f"  [{d['source']}] {d['text']}")
