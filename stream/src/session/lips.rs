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

/// A clip whose segment has crops for less than this share of its time is
/// no clip: the video missed the segment.
const MIN_COVER: f64 = 0.5;

/// One settled mouth crop, normalised for the lip encoder.
struct Crop {
    pts_s: f64,
    /// A face was found there or between two detections around it (not
    /// held after the face was last seen).
    face: bool,
    pixels: Vec<f32>,
}

/// Mouth crops over a segment's time.
pub struct SegmentClip {
    /// One crop per 25 fps slot of the segment; slots the video missed
    /// take the nearest crop.
    pub clip: LipClip,
    /// Slots with a crop of their own that shows a face.
    pub faces: usize,
    /// Slots with a crop of their own.
    pub covered: usize,
}

impl SegmentClip {
    /// Whether the video covers enough of the segment to read it.
    pub fn usable(&self) -> bool {
        self.covered as f64 >= MIN_COVER * self.clip.frames as f64
    }
}

/// The crops a segment is read with: its clip when the video covers most
/// of it and shows a face; without them the audio alone (a segment
/// without audio and without a face has nothing to read), unless the
/// model cannot hear audio alone (`audio_alone` false) and there is audio.
pub fn video_for(clip: Option<SegmentClip>, has_audio: bool, audio_alone: bool) -> Option<LipClip> {
    let needs_video = has_audio && !audio_alone;
    match clip {
        Some(c) if (c.usable() && c.faces > 0) || needs_video => Some(c.clip),
        _ => None,
    }
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
    /// Presentation time of the newest frame taken.
    last_frame_s: f64,
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
            last_frame_s: f64::NEG_INFINITY,
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
        self.last_frame_s = self.last_frame_s.max(frame.pts_s);
        if is_mouth_crop(frame) {
            let rgb = (0..frame.height)
                .flat_map(|y| frame.row(y).to_vec())
                .collect();
            let crop = MouthCrop {
                pts_s: frame.pts_s,
                face: true,
                rgb,
                held: false,
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

    /// Presentation time of the newest frame (-inf before the first).
    pub fn last_frame_s(&self) -> f64 {
        self.last_frame_s
    }

    /// The open face-presence segment of a stream without audio: (id,
    /// start, start), as the endpointer reports an open segment.
    pub fn open_segment(&self) -> Option<(u64, f64, f64)> {
        let s = self.segmenter.as_ref()?;
        s.open.map(|(start, _)| (s.next_id, start, start))
    }

    /// Closes an open face-presence segment (Control FLUSH).
    pub fn flush(&mut self, events: &mut Vec<SpeechEvent>) {
        if let Some(s) = &mut self.segmenter {
            s.close(EndReason::Flush, events);
        }
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
            let face = crop.face && !crop.held;
            if let Some(s) = &mut self.segmenter {
                s.crop(crop.pts_s, face, events);
            }
            self.crops.push_back(Crop {
                pts_s: crop.pts_s,
                face,
                pixels,
            });
        }
    }

    /// Media time up to which the crops are final.
    pub fn settled_until(&self) -> f64 {
        self.settled_s
    }

    /// The crops of `from_s..to_s` on its 25 fps grid (a slot the video
    /// missed takes the nearest crop); `None` when no crop falls in it.
    pub fn clip(&self, from_s: f64, to_s: f64) -> Option<SegmentClip> {
        let frames = ((to_s - from_s) * LIP_FPS).round().max(1.0) as usize;
        let half = 0.5 / LIP_FPS;
        let start = self.crops.partition_point(|c| c.pts_s < from_s - half);
        let mut own: Vec<Option<usize>> = vec![None; frames];
        let (mut covered, mut faces) = (0, 0);
        for i in start..self.crops.len() {
            let c = &self.crops[i];
            let slot = ((c.pts_s - from_s) * LIP_FPS).round();
            if slot >= frames as f64 {
                break;
            }
            let slot = slot.max(0.0) as usize;
            if own[slot].is_none() {
                own[slot] = Some(i);
                covered += 1;
                faces += usize::from(c.face);
            }
        }
        if covered == 0 {
            return None;
        }
        // Missing slots take the nearest slot's own crop (the earlier on a tie).
        let mut next: Vec<Option<(usize, usize)>> = vec![None; frames];
        let mut seen = None;
        for k in (0..frames).rev() {
            seen = own[k].map(|i| (k, i)).or(seen);
            next[k] = seen;
        }
        let mut data = Vec::with_capacity(frames * LIP_SIZE * LIP_SIZE);
        let mut last: Option<(usize, usize)> = None;
        for k in 0..frames {
            last = own[k].map(|i| (k, i)).or(last);
            let i = match (last, next[k]) {
                (Some((lk, li)), Some((nk, ni))) => {
                    if k - lk <= nk - k {
                        li
                    } else {
                        ni
                    }
                }
                (Some((_, i)), None) | (None, Some((_, i))) => i,
                (None, None) => unreachable!("some slot has a crop"),
            };
            data.extend_from_slice(&self.crops[i].pixels);
        }
        Some(SegmentClip {
            clip: LipClip { frames, data },
            faces,
            covered,
        })
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
            None if face => {
                self.open = Some((pts_s, frame_end));
                events.push(SpeechEvent::Start {
                    id: self.next_id,
                    start_s: pts_s,
                    audio_start_s: pts_s,
                });
            }
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

    /// A stream's track with the repo's face detector (tools/setup.sh).
    fn track() -> LipTrack {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        avlm_encoders::runtime::init(&root.join(".avlm").join(crate::config::ORT_LIB)).unwrap();
        LipTrack::new(&root.join(".avlm/models/face_detection_back_256x256.onnx"))
            .expect("the face detector (run tools/setup.sh)")
    }

    /// A 96x96 frame (a mouth crop already) of one grey level at `pts_s`.
    fn crop_frame(pts_s: f64, level: u8) -> Frame {
        Frame {
            width: 96,
            height: 96,
            stride: 96 * 3,
            data: vec![level; 96 * 96 * 3],
            pts_s,
        }
    }

    #[test]
    fn a_segment_clip_has_a_slot_per_25th_of_a_second_and_knows_what_the_video_missed() {
        let mut t = track();
        let mut events = Vec::new();
        // video from 4.0 s to 6.0 s only
        for i in 0..50 {
            t.frame(&crop_frame(4.0 + i as f64 / 25.0, i as u8), &mut events)
                .unwrap();
        }
        // a segment 0.8..4.9: 103 slots, 23 of them with video (4.0..4.9)
        let c = t.clip(0.8, 4.9).unwrap();
        assert_eq!(c.clip.frames, 103);
        assert_eq!(c.clip.data.len(), 103 * LIP_SIZE * LIP_SIZE);
        assert_eq!(c.covered, 23);
        assert!(!c.usable(), "23 of 103 slots is not enough video");
        // the audio would keep its length: 103 * 640 samples = 4.12 s
        assert!(
            video_for(Some(c), true, true).is_none(),
            "the audio alone then"
        );
        // a segment the video covers
        let c = t.clip(4.2, 5.8).unwrap();
        assert_eq!((c.clip.frames, c.covered, c.faces), (40, 40, 40));
        assert!(c.usable());
        // missing slots take the nearest crop: the clip's first slots are the 4.0 s crop
        let c = t.clip(3.8, 4.4).unwrap();
        assert_eq!((c.clip.frames, c.covered), (15, 10));
        let slot = |k: usize| c.clip.data[k * LIP_SIZE * LIP_SIZE];
        assert_eq!(slot(0), slot(5));
        assert_ne!(slot(5), slot(6));
        assert!(t.clip(7.0, 8.0).is_none());
    }

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
