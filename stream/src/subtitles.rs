//! SubRip (.srt) and WebVTT (.vtt) subtitles from `Final` transcripts and
//! `Caption`s of the video (marked `[video]`, so they are told apart from
//! what was said).

use std::fmt::Write;

use avlm_proto as pb;

/// Longest a caption stays on screen when no newer caption replaces it.
pub const CAPTION_HOLD_S: f64 = 4.0;

/// What marks a caption of the video in subtitles.
pub const CAPTION_MARK: &str = "[video]";

/// Collects a stream's finals and captions as it arrives.
#[derive(Debug, Default)]
pub struct CueCollector {
    finals: Vec<Cue>,
    captions: Vec<(f64, String)>,
    /// A cue per word of each final (when it carries word times).
    words: bool,
    /// Finals collected.
    final_count: usize,
}

impl CueCollector {
    /// A collector writing a cue per word of each final that has word times.
    pub fn word_level() -> Self {
        CueCollector {
            words: true,
            ..Default::default()
        }
    }

    pub fn push(&mut self, msg: &pb::ServerMessage) {
        match &msg.msg {
            Some(pb::server_message::Msg::Final(f)) => {
                self.final_count += 1;
                if self.words && !f.words.is_empty() {
                    self.finals.extend(f.words.iter().map(|w| Cue {
                        start_s: w.start_s,
                        end_s: w.end_s,
                        text: w.text.clone(),
                    }));
                } else {
                    self.finals.push(Cue {
                        start_s: f.start_s,
                        end_s: f.end_s,
                        text: f.text.clone(),
                    });
                }
            }
            Some(pb::server_message::Msg::Caption(c)) => {
                self.captions.push((c.media_time_s, c.text.clone()))
            }
            _ => {}
        }
    }

    /// Finals collected.
    pub fn finals(&self) -> usize {
        self.final_count
    }

    /// Captions collected.
    pub fn captions(&self) -> usize {
        self.captions.len()
    }

    /// Every cue: the finals, and each caption from its media time until the
    /// next caption or [`CAPTION_HOLD_S`], marked [`CAPTION_MARK`].
    pub fn cues(&self) -> Vec<Cue> {
        let mut captions = self.captions.clone();
        captions.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut cues = self.finals.clone();
        for (i, (t, text)) in captions.iter().enumerate() {
            let until = captions
                .get(i + 1)
                .map_or(t + CAPTION_HOLD_S, |(next, _)| next.min(t + CAPTION_HOLD_S));
            cues.push(Cue {
                start_s: *t,
                end_s: until,
                text: format!("{CAPTION_MARK} {text}"),
            });
        }
        cues
    }
}

/// One subtitle: media times in seconds and its text.
#[derive(Debug, Clone, PartialEq)]
pub struct Cue {
    pub start_s: f64,
    pub end_s: f64,
    pub text: String,
}

fn split_ms(t: f64) -> (u64, u64, u64, u64) {
    let ms = (t.max(0.0) * 1000.0).round() as u64;
    (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000)
}

fn timestamp(t: f64, sep: char) -> String {
    let (h, m, s, ms) = split_ms(t);
    format!("{h:02}:{m:02}:{s:02}{sep}{ms:03}")
}

/// Cue text with no blank lines (a blank line ends a cue in both formats).
fn one_block(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Cues worth writing: non-empty text, positive length, in time order.
fn usable(cues: &[Cue]) -> Vec<Cue> {
    let mut v: Vec<Cue> = cues
        .iter()
        .filter(|c| !one_block(&c.text).is_empty())
        .map(|c| Cue {
            start_s: c.start_s,
            end_s: c.end_s.max(c.start_s + 0.001),
            text: one_block(&c.text),
        })
        .collect();
    v.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
    v
}

pub fn srt(cues: &[Cue]) -> String {
    let mut out = String::new();
    for (i, c) in usable(cues).iter().enumerate() {
        let _ = write!(
            out,
            "{}\n{} --> {}\n{}\n\n",
            i + 1,
            timestamp(c.start_s, ','),
            timestamp(c.end_s, ','),
            c.text
        );
    }
    out
}

pub fn webvtt(cues: &[Cue]) -> String {
    let mut out = String::from("WEBVTT\n\n");
    for c in usable(cues) {
        // `&`, `<` are markup in cue text and `-->` would end the timing line.
        let text = c
            .text
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace("-->", "->");
        let _ = write!(
            out,
            "{} --> {}\n{}\n\n",
            timestamp(c.start_s, '.'),
            timestamp(c.end_s, '.'),
            text
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_hold_until_the_next_one_and_are_marked() {
        let mut c = CueCollector::default();
        let caption = |t: f64, text: &str| pb::ServerMessage {
            msg: Some(pb::server_message::Msg::Caption(pb::Caption {
                text: text.into(),
                media_time_s: t,
                ..Default::default()
            })),
        };
        c.push(&caption(1.0, "A tiger."));
        c.push(&caption(2.5, "A pineapple."));
        c.push(&pb::ServerMessage {
            msg: Some(pb::server_message::Msg::Final(pb::Final {
                text: "hello".into(),
                start_s: 0.5,
                end_s: 1.5,
                ..Default::default()
            })),
        });
        let cues = c.cues();
        assert_eq!((c.finals(), c.captions()), (1, 2));
        assert_eq!(cues[1].text, "[video] A tiger.");
        assert_eq!((cues[1].start_s, cues[1].end_s), (1.0, 2.5));
        assert_eq!(cues[2].end_s, 2.5 + CAPTION_HOLD_S);
        assert!(srt(&cues).contains("[video] A pineapple."));
    }

    #[test]
    fn word_level_cues_are_one_per_timed_word() {
        let fin = |words: Vec<pb::Word>, start_s: f64| pb::ServerMessage {
            msg: Some(pb::server_message::Msg::Final(pb::Final {
                text: "hello there".into(),
                start_s,
                end_s: start_s + 1.0,
                words,
                ..Default::default()
            })),
        };
        let word = |text: &str, start_s: f64, end_s: f64| pb::Word {
            text: text.into(),
            start_s,
            end_s,
        };
        let mut c = CueCollector::word_level();
        c.push(&fin(
            vec![word("hello", 0.5, 0.9), word("there", 0.9, 1.4)],
            0.5,
        ));
        // A final without word times stays whole.
        c.push(&fin(Vec::new(), 2.0));
        let cues = c.cues();
        assert_eq!(c.finals(), 2);
        assert_eq!(
            cues.iter().map(|c| c.text.as_str()).collect::<Vec<_>>(),
            ["hello", "there", "hello there"]
        );
        assert_eq!((cues[1].start_s, cues[1].end_s), (0.9, 1.4));
        let doc = srt(&cues);
        assert_eq!(parse(&doc, false).unwrap().len(), 3, "{doc}");
    }

    /// A strict reader: returns (start, end, text) per cue or an error.
    fn parse(doc: &str, vtt: bool) -> Result<Vec<(String, String, String)>, String> {
        let mut blocks: Vec<&str> = doc.split("\n\n").filter(|b| !b.is_empty()).collect();
        if vtt {
            if blocks.first() != Some(&"WEBVTT") {
                return Err("missing WEBVTT header".into());
            }
            blocks.remove(0);
        }
        let ts = |s: &str| -> Result<u64, String> {
            let sep = if vtt { '.' } else { ',' };
            let b = s.as_bytes();
            if s.len() != 12 || b[2] != b':' || b[5] != b':' || b[8] != sep as u8 {
                return Err(format!("bad timestamp {s:?}"));
            }
            let n = |r: std::ops::Range<usize>| {
                s[r].parse::<u64>()
                    .map_err(|_| format!("bad timestamp {s:?}"))
            };
            Ok(((n(0..2)? * 60 + n(3..5)?) * 60 + n(6..8)?) * 1000 + n(9..12)?)
        };
        let mut out = Vec::new();
        let mut last_end = 0;
        for (i, block) in blocks.iter().enumerate() {
            let mut lines = block.lines();
            if !vtt && lines.next() != Some(&(i + 1).to_string()) {
                return Err(format!("cue {} has a wrong index", i + 1));
            }
            let timing = lines.next().ok_or("no timing line")?;
            let (a, b) = timing.split_once(" --> ").ok_or("bad timing line")?;
            let (sa, sb) = (ts(a)?, ts(b)?);
            if sb <= sa || sa < last_end {
                return Err(format!("cue {} times out of order", i + 1));
            }
            last_end = sb;
            let text: Vec<&str> = lines.collect();
            if text.is_empty() {
                return Err("empty cue".into());
            }
            out.push((a.to_string(), b.to_string(), text.join("\n")));
        }
        Ok(out)
    }

    fn cues() -> Vec<Cue> {
        vec![
            Cue {
                start_s: 0.8,
                end_s: 4.9,
                text: "the quick brown fox".into(),
            },
            Cue {
                start_s: 6.05,
                end_s: 10.24,
                text: "a <b> & c --> d\n\n\nsecond line".into(),
            },
            Cue {
                start_s: 11.0,
                end_s: 11.5,
                text: "   ".into(),
            },
            Cue {
                start_s: 3725.5,
                end_s: 3727.0,
                text: "an hour in".into(),
            },
        ]
    }

    #[test]
    fn srt_is_valid_and_keeps_times() {
        let doc = srt(&cues());
        let parsed = parse(&doc, false).unwrap();
        assert_eq!(parsed.len(), 3, "the blank cue is dropped");
        assert_eq!(
            parsed[0],
            (
                "00:00:00,800".into(),
                "00:00:04,900".into(),
                "the quick brown fox".into()
            )
        );
        assert_eq!(parsed[1].2, "a <b> & c --> d\nsecond line");
        assert_eq!(parsed[2].0, "01:02:05,500");
    }

    #[test]
    fn webvtt_is_valid_and_escaped() {
        let doc = webvtt(&cues());
        let parsed = parse(&doc, true).unwrap();
        assert_eq!(parsed.len(), 3);
        assert_eq!(parsed[1].0, "00:00:06.050");
        assert_eq!(parsed[1].2, "a &lt;b> &amp; c -> d\nsecond line");
    }
}
