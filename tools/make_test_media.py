#!/usr/bin/env python3
"""Makes the test media for avlm's streaming tests, deterministically.

Speech: three espeak-ng utterances separated by silences of known length,
16 kHz mono. The speech bounds of each utterance are measured on the samples
(first and last sample above -40 dBFS) and written to `speech.json`, so tests
compare detected segments against where the speech really is.

Containers (all from the same audio, with a 25 fps test-pattern video):
  speech.webm        VP8 + Opus            (WebM / Matroska)
  speech.frag.mp4    H.264 + AAC, fragmented MP4
  speech.fast.mp4    H.264 + AAC, faststart MP4 (index first)
  speech.plain.mp4   H.264 + AAC, plain MP4 (index at the end: must be refused)
  speech.ts          H.264 + AAC, MPEG-TS
  speech.ogg         Opus audio only (no video stream)
  speech.mp3         MP3 audio only
  speech.flac        FLAC audio only
  speech.wav         PCM WAV, and speech.s16le (headerless 16 kHz mono s16le)
  short.webm         the first 3 s of speech.webm's audio
  late_audio.ts      MPEG-2 video + MP2 audio starting 3 s after the video, MPEG-TS
  speech.wv          WavPack with its trailing APEv2 tag
  speech.ul          headerless G.711 mu-law, 8 kHz mono
  two_tracks.mkv     Opus silence (default track), then the speech as a second audio track
  timestamp_jump.webm  audio timestamps jump forward by 100 s (must be refused)
  silence.webm, white_noise.webm, pink_noise.webm, tones.webm: 20 s each, no speech
  librivox.webm      a real LibriVox recording from pocketsphinx-testdata, Opus
  slides.webm        VP8, 640x360: three static scenes of 6 s, a real photo cut-out each
                     (tests/media/pictures) on its own background; slides.json lists them
  slides_speech.webm slides.webm's video with speech.wav's audio (Opus)
  still.mkv          one picture shown for 5 s (a single MJPEG frame of 5 s) + 5 s of silence
  video_jump.mkv     3 s of video, then its timestamps jump forward by 100 s for 2 s more

Usage: make_test_media.py OUT_DIR
"""

import json
import os
import subprocess
import sys
import tempfile
import wave

import numpy as np

RATE = 16000
UTTERANCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Streaming servers should report speech while the person is still talking.",
    "Seven bright lanterns were hung along the narrow harbour wall.",
]
# Silence before each utterance, and after the last one, in seconds.
GAPS = [0.8, 1.2, 1.5]
TAIL = 1.0
LIBRIVOX = "/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0870.wav"
PICTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "media", "pictures")
# (picture, background colour, what it shows), 6 s each.
SLIDES = [("tiger.png", "0x6f8f5f", "A tiger."), ("pineapple.png", "0xd8c8a8", "A pineapple."),
          ("sportscar.png", "0x7f8fa8", "A sports car.")]
SLIDE_S = 6.0


def make_slides(out, wav):
    """slides.webm (+ slides.json) and slides_speech.webm: static scenes of real pictures."""
    inputs, chains, scenes = [], [], []
    for i, (pic, colour, text) in enumerate(SLIDES):
        inputs += ["-f", "lavfi", "-i", f"color=c={colour}:s=640x360:r=25:d={SLIDE_S}",
                   "-i", os.path.join(PICTURES, pic)]
        chains.append(f"[{2 * i + 1}:v]scale=-1:220[p{i}];[{2 * i}:v][p{i}]overlay=(W-w)/2:(H-h)/2,"
                      f"noise=alls=6:allf=t,format=yuv420p[s{i}]")
        scenes.append({"start_s": i * SLIDE_S, "end_s": (i + 1) * SLIDE_S, "picture": pic, "text": text})
    graph = ";".join(chains) + ";" + "".join(f"[s{i}]" for i in range(len(SLIDES))) + \
        f"concat=n={len(SLIDES)}:v=1:a=0[v]"
    vp8 = ["-c:v", "libvpx", "-b:v", "300k", "-deadline", "realtime", "-cpu-used", "8", "-g", "25"]
    slides = os.path.join(out, "slides.webm")
    ffmpeg(*inputs, "-filter_complex", graph, "-map", "[v]", *vp8, "-fflags", "+bitexact", slides)
    ffmpeg("-i", slides, "-i", wav, "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-af", "apad",
           "-t", str(SLIDE_S * len(SLIDES)), "-c:a", "libopus", "-b:a", "48k",
           os.path.join(out, "slides_speech.webm"))
    with open(os.path.join(out, "slides.json"), "w") as f:
        json.dump({"duration_s": SLIDE_S * len(SLIDES), "scenes": scenes}, f, indent=2)
        f.write("\n")


def run(*cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def ffmpeg(*args):
    run("ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args)


def read_wav(path):
    with wave.open(path) as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2"), w.getframerate()


def speak(text, tmp, index):
    raw = os.path.join(tmp, f"u{index}.wav")
    run("espeak-ng", "-v", "en-us", "-s", "150", "-w", raw, text)
    out = os.path.join(tmp, f"u{index}_16k.wav")
    ffmpeg("-i", raw, "-ar", str(RATE), "-ac", "1", "-c:a", "pcm_s16le", out)
    samples, rate = read_wav(out)
    assert rate == RATE
    # Trim espeak's own leading/trailing silence so the gaps are exact.
    loud = np.nonzero(np.abs(samples.astype(np.int32)) > 327)[0]  # -40 dBFS
    return samples[loud[0] : loud[-1] + 1]


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        parts, speech, t = [], [], 0
        for i, text in enumerate(UTTERANCES):
            gap = np.zeros(int(GAPS[i] * RATE), dtype=np.int16)
            parts.append(gap)
            t += len(gap)
            utt = speak(text, tmp, i)
            speech.append({"start_s": t / RATE, "end_s": (t + len(utt)) / RATE, "text": text})
            parts.append(utt)
            t += len(utt)
        parts.append(np.zeros(int(TAIL * RATE), dtype=np.int16))
        audio = np.concatenate(parts)
        duration = len(audio) / RATE

        wav = os.path.join(out, "speech.wav")
        with wave.open(wav, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(RATE)
            w.writeframes(audio.astype("<i2").tobytes())
        with open(os.path.join(out, "speech.s16le"), "wb") as f:
            f.write(audio.astype("<i2").tobytes())

        video = ["-f", "lavfi", "-i", f"testsrc=size=128x96:rate=25:duration={duration}"]
        h264 = ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-g", "25", "-bf", "0", "-crf", "40", "-maxrate", "48k", "-bufsize", "96k"]
        aac = ["-c:a", "aac", "-b:a", "64k", "-ar", "48000"]
        both = ["-i", wav, *video, "-map", "0:a", "-map", "1:v", "-shortest", "-fflags", "+bitexact"]
        ffmpeg(*both, "-c:v", "libvpx", "-b:v", "40k", "-deadline", "realtime", "-cpu-used", "8",
               "-c:a", "libopus", "-b:a", "48k", os.path.join(out, "speech.webm"))
        ffmpeg(*both, *h264, *aac, "-movflags", "frag_keyframe+empty_moov+default_base_moof",
               os.path.join(out, "speech.frag.mp4"))
        ffmpeg(*both, *h264, *aac, "-movflags", "+faststart", os.path.join(out, "speech.fast.mp4"))
        ffmpeg(*both, *h264, *aac, os.path.join(out, "speech.plain.mp4"))
        ffmpeg(*both, *h264, *aac, "-f", "mpegts", os.path.join(out, "speech.ts"))
        ffmpeg("-i", wav, "-c:a", "libopus", "-b:a", "48k", os.path.join(out, "speech.ogg"))
        ffmpeg("-i", wav, "-c:a", "libmp3lame", "-b:a", "64k", os.path.join(out, "speech.mp3"))
        ffmpeg("-i", wav, "-c:a", "flac", os.path.join(out, "speech.flac"))
        # Media with no speech at all: nothing may be reported for these.
        for name, graph in [
            ("silence", "anullsrc=r=16000:cl=mono:d=20"),
            ("white_noise", "anoisesrc=d=20:c=white:r=16000:a=0.3:seed=7"),
            ("pink_noise", "anoisesrc=d=20:c=pink:r=16000:a=0.5:seed=11"),
            ("tones", "aevalsrc=0.4*sin(2*PI*(300+200*floor(t*2))*t):d=20:s=16000"),
        ]:
            ffmpeg("-f", "lavfi", "-i", graph, "-c:a", "libopus", "-b:a", "48k", os.path.join(out, f"{name}.webm"))
        # Audio whose timestamps jump forward by 100 s at 2 s: refused.
        ffmpeg("-i", wav, "-af", "asetpts='if(gte(T,2),PTS+100/TB,PTS)'", "-c:a", "libopus", "-b:a", "32k",
               os.path.join(out, "timestamp_jump.webm"))
        # MPEG-TS whose audio starts 3 s after its video, past the server's 1 s of probing.
        ffmpeg("-f", "lavfi", "-i", f"testsrc=size=128x96:rate=25:duration={duration + 3}",
               "-itsoffset", "3", "-i", wav, "-map", "0:v", "-map", "1:a", "-c:v", "mpeg2video",
               "-b:v", "200k", "-c:a", "mp2", "-b:a", "64k", "-f", "mpegts",
               os.path.join(out, "late_audio.ts"))
        # WavPack ends with an APEv2 tag the demuxer reads as a broken block.
        ffmpeg("-i", wav, "-c:a", "wavpack", os.path.join(out, "speech.wv"))
        # Headerless G.711 mu-law at 8 kHz, as telephone systems stream it.
        ffmpeg("-i", wav, "-ar", "8000", "-f", "mulaw", os.path.join(out, "speech.ul"))
        # Two audio tracks: silence first (flagged default, FFmpeg's pick), the speech second.
        ffmpeg("-f", "lavfi", "-i", f"anullsrc=r=48000:cl=mono:d={duration}", "-i", wav,
               "-map", "0:a", "-map", "1:a", "-c:a", "libopus", "-b:a", "32k",
               os.path.join(out, "two_tracks.mkv"))
        # The first utterance alone, for real-time pacing tests.
        ffmpeg("-i", os.path.join(out, "speech.webm"), "-t", "3", "-map", "0:a", "-c:a", "copy",
               os.path.join(out, "short.webm"))
        if os.path.exists(LIBRIVOX):
            ffmpeg("-i", LIBRIVOX, "-c:a", "libopus", "-b:a", "32k", os.path.join(out, "librivox.webm"))
        make_slides(out, wav)
        # A still picture held for its whole duration, and a jump in the video timestamps.
        ffmpeg("-loop", "1", "-framerate", "0.2", "-i", os.path.join(PICTURES, "pineapple.png"),
               "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono:d=5", "-t", "5", "-vf", "scale=160:-2",
               "-c:v", "mjpeg", "-c:a", "pcm_s16le", os.path.join(out, "still.mkv"))
        ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=10:duration=5",
               "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono:d=5",
               "-vf", "setpts='if(gte(T,3),PTS+100/TB,PTS)'", "-c:v", "mjpeg", "-c:a", "pcm_s16le",
               os.path.join(out, "video_jump.mkv"))

        with open(os.path.join(out, "speech.json"), "w") as f:
            json.dump({"duration_s": duration, "sample_rate": RATE, "speech": speech}, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
