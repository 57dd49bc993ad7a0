//! Lip reading in a TRANSCRIBE stream: each decoded frame (25 a second)
//! goes through the face detector and the mouth tracker; the settled crops
//! are kept, normalised for the lip encoder, until a segment takes them.
//! Streams without audio are cut into segments by face presence here.
//! Frames of exactly 96x96 pixels are taken as mouth crops already (the
//! clips auto_avsr's preparation writes, such as pre-cropped LRS3).

use std::collections::VecDeque;
use std::path::Path;

use avlm_encoders::face::FaceDetector;
use avlm_encoders::mouth::{lip_input, MouthConfig, MouthCrop, MouthTracker, CROP};
use avlm_encoders::{EndReason, Frame, SpeechEvent};

use crate::engine::asr::{LIP_FPS, LIP_SIZE};
use crate::engine::LipClip;
use crate::error::SessionError;

/// Threads of a stream's face detector (a small network, run per frame).
const DETECTOR_THREADS: usize = 1;

/// A face-presence segment (video without audio) closes after this long
/// without a face.
const FACE_GAP_S: f64 = 1.0;

/// One settled mouth crop, normalised for the lip encoder.
struct Crop {
    pts_s: f64,
    face: bool,
    pixels: Vec<f32>,
}

/// Whether `frame` is a mouth crop already (96x96, as auto_avsr writes them).
pub fn is_mouth_crop(frame: &Frame) -> bool {
    frame.width as usize == CROP && frame.height as usize == CROP
}

/// Mouth crops of one stream.
pub struct LipTrack {
    detector: FaceDetector,
    tracker: MouthTracker,
    crops: VecDeque<Crop>,
    /// Media time up to which crops are settled (no later crop can fall before it).
    settled_s: f64,
    finished: bool,
    /// Video-only streams: segments by face presence.
    segmenter: Option<FaceSegmenter>,
}

impl LipTrack {
    /// Loads the stream's face detector from `detector`.
    pub fn new(detector: &Path) -> Result<Self, SessionError> {
        let detector = FaceDetector::load(detector, DETECTOR_THREADS)
            .map_err(|e| SessionError::internal(format!("cannot load the face detector: {e}")))?;
        Ok(LipTrack {
            detector,
            tracker: MouthTracker::new(MouthConfig::default()),
            crops: VecDeque::new(),
            settled_s: 0.0,
            finished: false,
            segmenter: None,
        })
    }

    /// Cuts the stream into segments by face presence (for video without
    /// audio), none longer than `max_segment_s`.
    pub fn segmenting(mut self, max_segment_s: f64) -> Self {
        self.segmenter = Some(FaceSegmenter::new(max_segment_s));
        self
    }

    /// Takes one decoded frame; closed face-presence segments go to `events`.
    pub fn frame(
        &mut self,
        frame: &Frame,
        events: &mut Vec<SpeechEvent>,
    ) -> Result<(), SessionError> {
        if is_mouth_crop(frame) {
            let rgb = (0..frame.height)
                .flat_map(|y| frame.row(y).to_vec())
                .collect();
            let crop = MouthCrop {
                pts_s: frame.pts_s,
                face: true,
                rgb,
            };
            self.settle(vec![crop], events);
            return Ok(());
        }
        let crops = self
            .tracker
            .push(frame, &mut self.detector)
            .map_err(|e| SessionError::internal(format!("mouth tracking failed: {e}")))?;
        self.settle(crops, events);
        Ok(())
    }

    /// At the end of the stream: settles every crop held back.
    pub fn finish(&mut self, events: &mut Vec<SpeechEvent>) {
        if self.finished {
            return;
        }
        self.finished = true;
        let crops = self.tracker.finish();
        self.settle(crops, events);
        self.settled_s = f64::INFINITY;
        if let Some(s) = &mut self.segmenter {
            s.close(EndReason::EndOfStream, events);
        }
    }

    fn settle(
        &mut self,
        crops: Vec<avlm_encoders::mouth::MouthCrop>,
        events: &mut Vec<SpeechEvent>,
    ) {
        for crop in crops {
            let pixels = lip_input(std::slice::from_ref(&crop));
            debug_assert_eq!(pixels.len(), LIP_SIZE * LIP_SIZE);
            self.settled_s = self.settled_s.max(crop.pts_s + 1.0 / LIP_FPS);
            if let Some(s) = &mut self.segmenter {
                s.crop(crop.pts_s, crop.face, events);
            }
            self.crops.push_back(Crop {
                pts_s: crop.pts_s,
                face: crop.face,
                pixels,
            });
        }
    }

    /// Media time up to which the crops are final.
    pub fn settled_until(&self) -> f64 {
        self.settled_s
    }

    /// The crops from `from_s` to `to_s` as a clip, with how many of them
    /// show a face (found or interpolated); `None` when there are none.
    pub fn clip(&self, from_s: f64, to_s: f64) -> Option<(LipClip, usize)> {
        let mut data = Vec::new();
        let (mut frames, mut faces) = (0, 0);
        for c in self
            .crops
            .iter()
            .filter(|c| c.pts_s >= from_s - 0.5 / LIP_FPS && c.pts_s < to_s - 0.5 / LIP_FPS)
        {
            data.extend_from_slice(&c.pixels);
            frames += 1;
            faces += usize::from(c.face);
        }
        (frames > 0).then_some((LipClip { frames, data }, faces))
    }

    /// From the first crop held to the end of the last.
    pub fn span(&self) -> Option<(f64, f64)> {
        Some((
            self.crops.front()?.pts_s,
            self.crops.back()?.pts_s + 1.0 / LIP_FPS,
        ))
    }

    /// Drops crops before `t` (no segment can reach them any more).
    pub fn forget_before(&mut self, t: f64) {
        while self.crops.front().is_some_and(|c| c.pts_s < t) {
            self.crops.pop_front();
        }
    }
}

/// Segments of a video-only stream: open while a face is seen, closed after
/// [`FACE_GAP_S`] without one or at the longest segment.
struct FaceSegmenter {
    max_segment_s: f64,
    next_id: u64,
    /// Start and last face time of the open segment.
    open: Option<(f64, f64)>,
}

impl FaceSegmenter {
    fn new(max_segment_s: f64) -> Self {
        FaceSegmenter {
            max_segment_s,
            next_id: 0,
            open: None,
        }
    }

    fn crop(&mut self, pts_s: f64, face: bool, events: &mut Vec<SpeechEvent>) {
        let frame_end = pts_s + 1.0 / LIP_FPS;
        match self.open {
            None if face => self.open = Some((pts_s, frame_end)),
            None => {}
            Some((start, _)) if face => {
                self.open = Some((start, frame_end));
                if frame_end - start >= self.max_segment_s {
                    self.close(EndReason::MaxLength, events);
                }
            }
            Some((_, last)) if frame_end - last >= FACE_GAP_S => {
                self.close(EndReason::Silence, events);
            }
            Some(_) => {}
        }
    }

    fn close(&mut self, reason: EndReason, events: &mut Vec<SpeechEvent>) {
        if let Some((start, end)) = self.open.take() {
            events.push(SpeechEvent::End {
                id: self.next_id,
                start_s: start,
                end_s: end,
                audio_start_s: start,
                audio_end_s: end,
                reason,
            });
            self.next_id += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(events: &[SpeechEvent]) -> Vec<(u64, f64, f64)> {
        events
            .iter()
            .filter_map(|e| match *e {
                SpeechEvent::End {
                    id, start_s, end_s, ..
                } => Some((id, start_s, end_s)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn face_presence_opens_and_closes_segments() {
        let mut s = FaceSegmenter::new(10.0);
        let mut events = Vec::new();
        // no face for 1 s, a face for 2 s, none for 2 s, a face again until the end
        for i in 0..175 {
            let t = i as f64 / LIP_FPS;
            let face = (1.0..3.0).contains(&t) || t >= 5.0;
            s.crop(t, face, &mut events);
        }
        s.close(EndReason::EndOfStream, &mut events);
        let e = ends(&events);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            (e[0].1 - 1.0).abs() < 1e-9 && (e[0].2 - 3.0).abs() < 1e-9,
            "{e:?}"
        );
        assert_eq!(e[1].0, 1);
        assert!(
            (e[1].1 - 5.0).abs() < 1e-9 && (e[1].2 - 7.0).abs() < 1e-9,
            "{e:?}"
        );
    }

    #[test]
    fn a_face_seen_for_ever_is_cut_at_the_longest_segment() {
        let mut s = FaceSegmenter::new(2.0);
        let mut events = Vec::new();
        for i in 0..125 {
            s.crop(i as f64 / LIP_FPS, true, &mut events);
        }
        let e = ends(&events);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!((e[0].2 - e[0].1 - 2.0).abs() < 1e-9);
        assert!((e[1].1 - 2.0).abs() < 1e-9);
    }
}
