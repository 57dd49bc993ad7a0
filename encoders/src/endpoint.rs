//! Endpointing: turns a stream of per-window speech probabilities into speech
//! segments with media times, as a live server needs them.
//!
//! A segment is confirmed only once it has lasted `min_speech` (so a click is
//! never reported), and then reported at once with its start in the past;
//! segment times are where speech was detected (the first window at or above
//! the threshold to the end of the last one), while `audio_*` times add the
//! pre- and post-roll a recogniser should decode so onsets are not clipped;
//! it closes after `min_silence` of trailing silence, at `max_segment`, or
//! when the caller flushes. Hysteresis as in Silero's own iterator: speech
//! starts at `threshold` and counts as silence below `threshold - 0.15`.

/// Endpointing settings, all in media time.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointConfig {
    /// Probability at or above which a window is speech.
    pub threshold: f32,
    /// Shortest speech reported, in seconds.
    pub min_speech_s: f64,
    /// Trailing silence that closes a segment, in seconds.
    pub min_silence_s: f64,
    /// Audio kept before the detected onset, in seconds.
    pub pre_roll_s: f64,
    /// Audio kept after the last speech window, in seconds.
    pub post_roll_s: f64,
    /// Longest segment before it is split, in seconds.
    pub max_segment_s: f64,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            threshold: 0.5,
            min_speech_s: 0.25,
            min_silence_s: 0.5,
            pre_roll_s: 0.1,
            post_roll_s: 0.05,
            max_segment_s: 30.0,
        }
    }
}

impl EndpointConfig {
    /// Probability below which a window counts as silence.
    pub fn silence_threshold(&self) -> f32 {
        (self.threshold - 0.15).max(0.01)
    }
}

/// Why a segment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Silence,
    MaxLength,
    Flush,
    EndOfStream,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Silence => "silence",
            EndReason::MaxLength => "max_length",
            EndReason::Flush => "flush",
            EndReason::EndOfStream => "end_of_stream",
        }
    }
}

/// What the endpointer reports.
#[derive(Debug, Clone, PartialEq)]
pub enum SpeechEvent {
    /// Speech confirmed; it began at `start_s`.
    Start {
        id: u64,
        start_s: f64,
        audio_start_s: f64,
    },
    /// The segment `id`: speech spans `[start_s, end_s]`, the audio to decode
    /// `[audio_start_s, audio_end_s]`.
    End {
        id: u64,
        start_s: f64,
        end_s: f64,
        audio_start_s: f64,
        audio_end_s: f64,
        reason: EndReason,
    },
}

/// Windows of history kept for onset refinement and for finding the quietest
/// split point (about 2 s of 32 ms windows).
const HISTORY: usize = 64;
/// How far back from the length limit a split point is searched for.
const SPLIT_SEARCH_S: f64 = 1.5;
/// Onset refinement looks back at most this far.
const ONSET_SEARCH_S: f64 = 0.5;
/// Probability above which a window directly before an onset still counts as its start.
const ONSET_FLOOR: f32 = 0.15;

#[derive(Debug, Clone, PartialEq)]
enum State {
    Idle,
    /// Speech seen since `onset_s`, not yet `min_speech` long.
    Pending {
        onset_s: f64,
        last_speech_s: f64,
    },
    /// An open segment.
    Active {
        id: u64,
        start_s: f64,
        audio_start_s: f64,
        last_speech_s: f64,
        silence_since_s: Option<f64>,
    },
}

/// Streaming endpointer; feed it one probability per VAD window in order.
#[derive(Debug, Clone)]
pub struct Endpointer {
    config: EndpointConfig,
    state: State,
    /// Recent windows `(start_s, end_s, prob)`, newest last.
    history: std::collections::VecDeque<(f64, f64, f32)>,
    next_id: u64,
    /// End of the previous segment: a new segment's pre-roll never reaches back past it.
    last_end_s: f64,
    /// End of the last window seen.
    now_s: f64,
    /// No split before this time (see `keep_whole_until`).
    keep_until_s: f64,
}

impl Endpointer {
    pub fn new(config: EndpointConfig) -> Self {
        Endpointer {
            config,
            state: State::Idle,
            history: std::collections::VecDeque::with_capacity(HISTORY),
            next_id: 0,
            last_end_s: 0.0,
            now_s: 0.0,
            keep_until_s: 0.0,
        }
    }

    pub fn config(&self) -> &EndpointConfig {
        &self.config
    }

    /// Whether a segment is open.
    pub fn in_speech(&self) -> bool {
        matches!(self.state, State::Active { .. })
    }

    /// The open segment: `(id, start_s, audio_start_s)`.
    pub fn open_segment(&self) -> Option<(u64, f64, f64)> {
        match self.state {
            State::Active {
                id,
                start_s,
                audio_start_s,
                ..
            } => Some((id, start_s, audio_start_s)),
            _ => None,
        }
    }

    /// End of the last window seen.
    pub fn now_s(&self) -> f64 {
        self.now_s
    }

    /// Feeds the probability of the window `[start_s, end_s)`; events go to `out`.
    pub fn push(&mut self, start_s: f64, end_s: f64, prob: f32, out: &mut Vec<SpeechEvent>) {
        self.now_s = end_s;
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back((start_s, end_s, prob));
        let speech = prob >= self.config.threshold;
        let silence = prob < self.config.silence_threshold();
        match self.state.clone() {
            State::Idle => {
                if speech {
                    self.state = State::Pending {
                        onset_s: start_s,
                        last_speech_s: end_s,
                    };
                    self.confirm_if_long(end_s, out);
                }
            }
            State::Pending {
                onset_s,
                last_speech_s,
            } => {
                if speech {
                    self.state = State::Pending {
                        onset_s,
                        last_speech_s: end_s,
                    };
                    self.confirm_if_long(end_s, out);
                } else if end_s - last_speech_s >= self.config.min_silence_s {
                    // Anything short of speech for min_silence ends a
                    // tentative onset (not only clear silence), so a long
                    // stretch just under the threshold cannot keep it alive.
                    self.state = State::Idle;
                }
            }
            State::Active {
                id,
                start_s: seg_start,
                audio_start_s,
                last_speech_s,
                silence_since_s,
            } => {
                let mut last_speech_s = last_speech_s;
                let mut silence_since_s = silence_since_s;
                if speech {
                    last_speech_s = end_s;
                    silence_since_s = None;
                } else if silence {
                    let since = *silence_since_s.get_or_insert(start_s);
                    if end_s - since >= self.config.min_silence_s {
                        self.close(
                            id,
                            seg_start,
                            audio_start_s,
                            last_speech_s,
                            EndReason::Silence,
                            out,
                        );
                        return;
                    }
                }
                self.state = State::Active {
                    id,
                    start_s: seg_start,
                    audio_start_s,
                    last_speech_s,
                    silence_since_s,
                };
                if end_s - audio_start_s >= self.config.max_segment_s {
                    // Split where speech is quietest near the limit, so a
                    // word is not cut in two, and not before audio already
                    // transcribed in part (see `keep_whole_until`); speech
                    // after the split point opens the next segment.
                    let cut = self.quietest_point((seg_start + 0.5).max(self.keep_until_s), end_s);
                    out.push(SpeechEvent::End {
                        id,
                        start_s: seg_start,
                        end_s: cut,
                        audio_start_s,
                        audio_end_s: cut,
                        reason: EndReason::MaxLength,
                    });
                    self.last_end_s = cut;
                    self.state = State::Idle;
                    self.resume_after_split(cut, out);
                }
            }
        }
    }

    /// Closes an open segment at the media seen so far (flush or end of
    /// stream). Unconfirmed speech shorter than `min_speech` is dropped.
    pub fn finish(&mut self, reason: EndReason, out: &mut Vec<SpeechEvent>) {
        if let State::Active {
            id,
            start_s,
            audio_start_s,
            last_speech_s,
            ..
        } = self.state
        {
            self.close(id, start_s, audio_start_s, last_speech_s, reason, out);
        } else {
            self.state = State::Idle;
        }
    }

    /// After a split at `cut`: the speech seen beyond it is a tentative onset
    /// like any other (confirmed once it lasts `min_speech`), starting at the
    /// cut itself when it runs on across it. Only silence after the cut
    /// opens nothing.
    fn resume_after_split(&mut self, cut: f64, out: &mut Vec<SpeechEvent>) {
        let threshold = self.config.threshold;
        let mut speech = self
            .history
            .iter()
            .filter(|(_, end, prob)| *end > cut + 1e-9 && *prob >= threshold);
        let Some(&(first_start, first_end, _)) = speech.next() else {
            return;
        };
        let last_end = speech.next_back().map_or(first_end, |w| w.1);
        // Contiguous: the first speech window holds the cut or follows it directly.
        let onset_s = if first_start - cut <= (first_end - first_start) + 1e-9 {
            cut
        } else {
            first_start
        };
        self.state = State::Pending {
            onset_s,
            last_speech_s: last_end,
        };
        self.confirm_if_long(last_end, out);
    }

    /// A split of the open segment at `max_segment` may not fall before `t`:
    /// a TRANSCRIBE session's partials have committed words from the audio
    /// up to there, and a Final may not hold words spoken after its end.
    pub fn keep_whole_until(&mut self, t: f64) {
        self.keep_until_s = t;
    }

    fn confirm_if_long(&mut self, end_s: f64, out: &mut Vec<SpeechEvent>) {
        if let State::Pending { onset_s, .. } = self.state {
            if end_s - onset_s >= self.config.min_speech_s {
                let onset_s = self.refine_onset(onset_s);
                let audio_start_s = (onset_s - self.config.pre_roll_s)
                    .max(self.last_end_s)
                    .max(0.0);
                let id = self.take_id();
                self.state = State::Active {
                    id,
                    start_s: onset_s,
                    audio_start_s,
                    last_speech_s: end_s,
                    silence_since_s: None,
                };
                out.push(SpeechEvent::Start {
                    id,
                    start_s: onset_s,
                    audio_start_s,
                });
            }
        }
    }

    /// The middle of the least speech-like window in the last
    /// `SPLIT_SEARCH_S` before `until` (and after `not_before`); the latest
    /// such window wins ties. `until` when there is none.
    fn quietest_point(&self, not_before: f64, until: f64) -> f64 {
        let from = not_before.max(until - SPLIT_SEARCH_S);
        self.history
            .iter()
            .filter(|(start, _, _)| *start >= from)
            .min_by(|a, b| a.2.total_cmp(&b.2).then(b.0.total_cmp(&a.0)))
            .map_or(until, |(start, end, _)| (start + end) / 2.0)
    }

    /// Moves `onset_s` back over the contiguous soft-onset windows before it.
    fn refine_onset(&self, onset_s: f64) -> f64 {
        let floor = ONSET_FLOOR.min(self.config.silence_threshold());
        let mut onset = onset_s;
        for &(start, _, prob) in self.history.iter().rev() {
            if start >= onset_s - 1e-9 {
                continue;
            }
            if start < onset_s - ONSET_SEARCH_S {
                break;
            }
            if prob < floor || start < self.last_end_s {
                break;
            }
            onset = start;
        }
        onset
    }

    fn close(
        &mut self,
        id: u64,
        start_s: f64,
        audio_start_s: f64,
        end_s: f64,
        reason: EndReason,
        out: &mut Vec<SpeechEvent>,
    ) {
        let audio_end_s = (end_s + self.config.post_roll_s).min(self.now_s.max(end_s));
        out.push(SpeechEvent::End {
            id,
            start_s,
            end_s,
            audio_start_s,
            audio_end_s,
            reason,
        });
        self.last_end_s = audio_end_s;
        self.state = State::Idle;
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: f64 = 0.032;

    fn run(config: EndpointConfig, probs: &[f32]) -> Vec<SpeechEvent> {
        run_on(Endpointer::new(config), probs)
    }

    fn run_on(mut ep: Endpointer, probs: &[f32]) -> Vec<SpeechEvent> {
        let mut out = Vec::new();
        for (i, &p) in probs.iter().enumerate() {
            ep.push(i as f64 * W, (i + 1) as f64 * W, p, &mut out);
        }
        ep.finish(EndReason::EndOfStream, &mut out);
        out
    }

    fn pattern(parts: &[(f32, usize)]) -> Vec<f32> {
        parts
            .iter()
            .flat_map(|&(p, n)| std::iter::repeat_n(p, n))
            .collect()
    }

    #[test]
    fn one_segment_with_pre_and_post_roll() {
        let probs = pattern(&[(0.0, 20), (0.9, 30), (0.0, 40)]);
        let events = run(EndpointConfig::default(), &probs);
        assert_eq!(events.len(), 2);
        let SpeechEvent::End {
            start_s,
            end_s,
            audio_start_s,
            audio_end_s,
            reason,
            ..
        } = events[1]
        else {
            panic!("{events:?}")
        };
        assert!((start_s - 20.0 * W).abs() < 1e-9, "{start_s}");
        assert!((end_s - 50.0 * W).abs() < 1e-9, "{end_s}");
        assert!(
            (audio_start_s - (20.0 * W - 0.1)).abs() < 1e-9,
            "{audio_start_s}"
        );
        assert!(
            (audio_end_s - (50.0 * W + 0.05)).abs() < 1e-9,
            "{audio_end_s}"
        );
        assert_eq!(reason, EndReason::Silence);
    }

    #[test]
    fn soft_onset_moves_the_start_back() {
        let probs = pattern(&[(0.0, 20), (0.01, 2), (0.2, 3), (0.9, 30), (0.0, 40)]);
        let events = run(EndpointConfig::default(), &probs);
        assert!(
            matches!(events[0], SpeechEvent::Start { start_s, .. } if (start_s - 22.0 * W).abs() < 1e-9),
            "{events:?}"
        );
    }

    #[test]
    fn a_tentative_onset_expires_under_the_threshold() {
        // One speech window, 20 s just under the threshold, then real speech:
        // the segment starts with the real speech, not 20 s earlier.
        let probs = pattern(&[(0.9, 1), (0.4, 625), (0.9, 30), (0.0, 30)]);
        let events = run(EndpointConfig::default(), &probs);
        let SpeechEvent::Start { start_s, .. } = events[0] else {
            panic!("{events:?}")
        };
        assert!(start_s > 626.0 * W - 0.6, "segment starts at {start_s}");
    }

    #[test]
    fn short_burst_is_not_reported() {
        let probs = pattern(&[(0.0, 10), (0.9, 5), (0.0, 40)]);
        assert!(run(EndpointConfig::default(), &probs).is_empty());
    }

    #[test]
    fn short_pause_does_not_split() {
        let probs = pattern(&[(0.9, 20), (0.0, 10), (0.9, 20), (0.0, 30)]);
        let events = run(EndpointConfig::default(), &probs);
        assert_eq!(events.len(), 2, "{events:?}");
    }

    #[test]
    fn hysteresis_keeps_segment_open() {
        // 0.4 is below the threshold but above threshold - 0.15: not silence.
        let probs = pattern(&[(0.9, 20), (0.4, 30), (0.9, 5), (0.0, 30)]);
        let events = run(EndpointConfig::default(), &probs);
        assert_eq!(events.len(), 2, "{events:?}");
    }

    #[test]
    fn long_speech_is_split_at_max_length() {
        let config = EndpointConfig {
            max_segment_s: 1.0,
            ..EndpointConfig::default()
        };
        let probs = pattern(&[(0.9, 100), (0.0, 30)]);
        let events = run(config, &probs);
        let ends = closed(&events);
        assert!(ends.len() >= 3, "{events:?}");
        for w in ends.windows(2) {
            assert!(
                (w[0].1 - w[1].0).abs() < 1e-9,
                "segments must abut: {ends:?}"
            );
        }
        assert!(ends[..ends.len() - 1]
            .iter()
            .all(|e| e.2 == EndReason::MaxLength));
        assert!(ends.iter().all(|e| e.1 - e.0 <= 1.0 + W), "{ends:?}");
    }

    #[test]
    fn max_length_splits_at_the_quietest_point_before_the_limit() {
        let config = EndpointConfig {
            max_segment_s: 3.0,
            ..EndpointConfig::default()
        };
        // Speech from 0, a dip at window 80 (2.56 s) between two words, the
        // limit reached at about 3.1 s (pre-roll included).
        let mut probs = pattern(&[(0.9, 120), (0.0, 30)]);
        probs[80] = 0.3;
        let events = run(config.clone(), &probs);
        let SpeechEvent::End { end_s, reason, .. } = events[1] else {
            panic!("{events:?}")
        };
        assert_eq!(reason, EndReason::MaxLength);
        assert!(
            (end_s - 80.5 * W).abs() < 1e-9,
            "split at {end_s}, dip at {}",
            80.5 * W
        );
        // The next segment starts exactly there.
        assert!(
            matches!(events[2], SpeechEvent::Start { start_s, .. } if (start_s - end_s).abs() < 1e-9)
        );
        // Not before audio kept whole (a partial heard up to 2.8 s): the
        // speech runs on across the later cut.
        let mut ep = Endpointer::new(config);
        ep.keep_whole_until(2.8);
        let ends = closed(&run_on(ep, &probs));
        assert_eq!(ends[0].2, EndReason::MaxLength);
        assert!(ends[0].1 >= 2.8, "split at {} before 2.8 s", ends[0].1);
        assert!((ends[1].0 - ends[0].1).abs() < 1e-9, "{ends:?}");
    }

    fn closed(events: &[SpeechEvent]) -> Vec<(f64, f64, EndReason)> {
        events
            .iter()
            .filter_map(|e| match e {
                SpeechEvent::End {
                    start_s,
                    end_s,
                    reason,
                    ..
                } => Some((*start_s, *end_s, *reason)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_split_in_the_silence_after_speech_opens_no_segment() {
        // 1.76 s of speech, then silence: the 2 s limit falls 0.26 s into
        // it, before min_silence (0.5 s) would have closed the segment.
        let config = EndpointConfig {
            max_segment_s: 2.0,
            ..EndpointConfig::default()
        };
        let probs = pattern(&[(0.9, 55), (0.0, 40)]);
        let events = run(config.clone(), &probs);
        let ends = closed(&events);
        assert_eq!(ends.len(), 1, "{events:?}");
        assert_eq!(ends[0].2, EndReason::MaxLength);
        assert!(ends[0].1 >= 55.0 * W, "{ends:?}");
        // Speech resuming after a pause opens the next segment where it starts.
        let probs = pattern(&[(0.9, 55), (0.0, 10), (0.9, 20), (0.0, 40)]);
        let events = run(config, &probs);
        let ends = closed(&events);
        assert_eq!(ends.len(), 2, "{events:?}");
        assert!((ends[1].0 - 65.0 * W).abs() < 1e-9, "{ends:?}");
    }

    #[test]
    fn open_segment_closes_at_end_of_stream() {
        let probs = pattern(&[(0.0, 5), (0.9, 20)]);
        let events = run(EndpointConfig::default(), &probs);
        assert!(matches!(
            events.last(),
            Some(SpeechEvent::End { reason: EndReason::EndOfStream, end_s, .. }) if (*end_s - 25.0 * W).abs() < 1e-9
        ));
    }

    #[test]
    fn pre_roll_never_overlaps_previous_segment() {
        let config = EndpointConfig {
            pre_roll_s: 1.0,
            ..EndpointConfig::default()
        };
        let probs = pattern(&[(0.9, 20), (0.0, 20), (0.9, 20), (0.0, 30)]);
        let events = run(config, &probs);
        let ends: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                SpeechEvent::End {
                    audio_start_s,
                    audio_end_s,
                    ..
                } => Some((*audio_start_s, *audio_end_s)),
                _ => None,
            })
            .collect();
        assert_eq!(ends.len(), 2);
        assert!(ends[1].0 >= ends[0].1, "{ends:?}");
    }
}
