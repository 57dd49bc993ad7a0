//! WAV headers read here, so that live WAV audio starts at once.
//!
//! FFmpeg's WAV demuxer reads 64 KiB past the header at open (looking for
//! S/PDIF data hidden in PCM) before it hands out any audio: 2 s of a 16 kHz
//! mono stream, 4 s at 8 kHz, sitting in front of every event of a live
//! session. A PCM WAV's header says everything a headerless demuxer needs,
//! so such a stream is read past its header with FFmpeg's raw PCM demuxer of
//! the same sample format instead. Other WAVs (compressed codecs, RF64, odd
//! layouts) still go to FFmpeg's WAV demuxer.

use std::io::{self, Read};

/// Bytes of header looked at, at most, before giving the stream to FFmpeg.
const MAX_HEADER: usize = 64 * 1024;

const TAG_PCM: u16 = 1;
const TAG_FLOAT: u16 = 3;
const TAG_ALAW: u16 = 6;
const TAG_MULAW: u16 = 7;
const TAG_EXTENSIBLE: u16 = 0xFFFE;

/// A PCM WAV's audio as FFmpeg's headerless demuxers read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcmWav {
    /// FFmpeg's demuxer for the samples, e.g. `s16le`.
    pub demuxer: &'static str,
    pub sample_rate: u32,
    pub channels: u16,
    /// Offset of the first sample.
    pub data_offset: usize,
    /// Bytes of samples the header announces; `None` for a streaming
    /// header's 0 or 0xFFFFFFFF (read to the end).
    pub data_len: Option<u64>,
}

/// What the bytes seen so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Header {
    /// Not enough bytes yet.
    NeedMore,
    /// Not a WAV this module reads: FFmpeg decides.
    Other,
    Pcm(PcmWav),
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The raw demuxer for a format tag and sample width, if FFmpeg has one.
fn demuxer(tag: u16, bits: u16) -> Option<&'static str> {
    Some(match (tag, bits) {
        (TAG_PCM, 8) => "u8",
        (TAG_PCM, 16) => "s16le",
        (TAG_PCM, 24) => "s24le",
        (TAG_PCM, 32) => "s32le",
        (TAG_FLOAT, 32) => "f32le",
        (TAG_FLOAT, 64) => "f64le",
        (TAG_ALAW, 8) => "alaw",
        (TAG_MULAW, 8) => "mulaw",
        _ => return None,
    })
}

/// Reads a RIFF/WAVE header from the start of a stream.
pub fn parse(b: &[u8]) -> Header {
    if b.len() < 12 {
        let magic = b"RIFF????WAVE";
        let same = b.iter().zip(magic).all(|(x, m)| *m == b'?' || x == m);
        return if same {
            Header::NeedMore
        } else {
            Header::Other
        };
    }
    if &b[..4] != b"RIFF" || &b[8..12] != b"WAVE" {
        return Header::Other;
    }
    let mut format: Option<(u16, u16, u32, u16)> = None;
    let mut at = 12;
    loop {
        if at + 8 > b.len() {
            return Header::NeedMore;
        }
        let id = &b[at..at + 4];
        let size = u32_at(b, at + 4);
        let body = at + 8;
        if id == b"data" {
            let Some((tag, channels, rate, bits)) = format else {
                return Header::Other;
            };
            let Some(demuxer) = demuxer(tag, bits) else {
                return Header::Other;
            };
            return Header::Pcm(PcmWav {
                demuxer,
                sample_rate: rate,
                channels,
                data_offset: body,
                data_len: (size != 0 && size != u32::MAX).then_some(u64::from(size)),
            });
        }
        if id == b"fmt " {
            if size < 16 {
                return Header::Other;
            }
            if body + size as usize > b.len() {
                return Header::NeedMore;
            }
            let mut tag = u16_at(b, body);
            let channels = u16_at(b, body + 2);
            let rate = u32_at(b, body + 4);
            let block_align = u16_at(b, body + 12);
            let bits = u16_at(b, body + 14);
            if tag == TAG_EXTENSIBLE {
                // The sub-format GUID starts with the real format tag.
                if size < 40 {
                    return Header::Other;
                }
                tag = u16_at(b, body + 24);
            }
            // Samples in whole bytes, packed as the block says: anything else
            // (12-bit, padded containers) is FFmpeg's to sort out.
            if channels == 0
                || rate == 0
                || !bits.is_multiple_of(8)
                || u32::from(block_align) != u32::from(channels) * u32::from(bits / 8)
            {
                return Header::Other;
            }
            format = Some((tag, channels, rate, bits));
        }
        // Chunks are padded to an even size.
        at = body + size as usize + (size as usize & 1);
        if at > MAX_HEADER {
            return Header::Other;
        }
    }
}

/// A reader that hands out `prefix` (bytes already taken from `inner`)
/// before reading on, and stops after `limit` bytes when one is set.
pub struct Prefixed<R> {
    pub prefix: Vec<u8>,
    pub at: usize,
    pub inner: R,
    pub limit: Option<u64>,
}

impl<R: Read> Read for Prefixed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let room = match self.limit {
            Some(0) => return Ok(0),
            Some(left) => buf.len().min(usize::try_from(left).unwrap_or(usize::MAX)),
            None => buf.len(),
        };
        let n = if self.at < self.prefix.len() {
            let n = room.min(self.prefix.len() - self.at);
            buf[..n].copy_from_slice(&self.prefix[self.at..self.at + n]);
            self.at += n;
            if self.at == self.prefix.len() {
                self.prefix = Vec::new();
                self.at = 0;
            }
            n
        } else {
            self.inner.read(&mut buf[..room])?
        };
        if let Some(left) = &mut self.limit {
            *left -= n as u64;
        }
        Ok(n)
    }
}

/// Reads from `inner` until its start is known to be a PCM WAV header or
/// not; returns what to read instead (the samples of a PCM WAV, or every
/// byte for FFmpeg) and the WAV's format.
pub fn sniff<R: Read>(mut inner: R) -> io::Result<(Prefixed<R>, Option<PcmWav>)> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let verdict = loop {
        match parse(&seen) {
            Header::NeedMore if seen.len() < MAX_HEADER => {}
            Header::Pcm(wav) => break Some(wav),
            _ => break None,
        }
        let n = inner.read(&mut buf)?;
        if n == 0 {
            break None;
        }
        seen.extend_from_slice(&buf[..n]);
    };
    let (at, limit) = match &verdict {
        Some(wav) => (wav.data_offset, wav.data_len),
        None => (0, None),
    };
    // Samples already read past the header count against the data length.
    Ok((
        Prefixed {
            prefix: seen,
            at,
            inner,
            limit,
        },
        verdict,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(tag: u16, channels: u16, rate: u32, bits: u16, extra: &[u8], data: &[u8]) -> Vec<u8> {
        let block = channels * bits / 8;
        let mut fmt = Vec::new();
        let ext = tag == TAG_EXTENSIBLE;
        fmt.extend_from_slice(&tag.to_le_bytes());
        fmt.extend_from_slice(&channels.to_le_bytes());
        fmt.extend_from_slice(&rate.to_le_bytes());
        fmt.extend_from_slice(&(rate * u32::from(block)).to_le_bytes());
        fmt.extend_from_slice(&block.to_le_bytes());
        fmt.extend_from_slice(&bits.to_le_bytes());
        if ext {
            fmt.extend_from_slice(&22u16.to_le_bytes());
            fmt.extend_from_slice(&bits.to_le_bytes());
            fmt.extend_from_slice(&0u32.to_le_bytes());
            fmt.extend_from_slice(&TAG_FLOAT.to_le_bytes());
            fmt.extend_from_slice(&[0u8; 14]);
        }
        let mut w = b"RIFF\0\0\0\0WAVE".to_vec();
        w.extend_from_slice(b"fmt ");
        w.extend_from_slice(&(fmt.len() as u32).to_le_bytes());
        w.extend_from_slice(&fmt);
        w.extend_from_slice(extra);
        w.extend_from_slice(b"data");
        w.extend_from_slice(&(data.len() as u32).to_le_bytes());
        w.extend_from_slice(data);
        w
    }

    #[test]
    fn pcm_headers_name_the_raw_demuxer_and_where_samples_start() {
        let w = wav(TAG_PCM, 1, 16_000, 16, &[], &[1, 2, 3, 4]);
        assert_eq!(
            parse(&w),
            Header::Pcm(PcmWav {
                demuxer: "s16le",
                sample_rate: 16_000,
                channels: 1,
                data_offset: 44,
                data_len: Some(4),
            })
        );
        // A LIST chunk (odd size, padded) before the data, and float samples
        // announced through WAVE_FORMAT_EXTENSIBLE.
        let list = [b"LIST".as_slice(), &3u32.to_le_bytes(), b"abc\0"].concat();
        let w = wav(TAG_EXTENSIBLE, 2, 48_000, 32, &list, &[]);
        let Header::Pcm(p) = parse(&w) else {
            panic!("{:?}", parse(&w))
        };
        assert_eq!((p.demuxer, p.channels, p.data_len), ("f32le", 2, None));
        assert_eq!(p.data_offset, w.len());
        let Header::Pcm(p) = parse(&wav(TAG_MULAW, 1, 8000, 8, &[], &[])) else {
            panic!("a mu-law WAV")
        };
        assert_eq!((p.demuxer, p.sample_rate), ("mulaw", 8000));
    }

    #[test]
    fn partial_foreign_and_compressed_headers() {
        let w = wav(TAG_PCM, 1, 16_000, 16, &[], &[]);
        for cut in [0, 3, 12, 20, 40] {
            assert_eq!(parse(&w[..cut]), Header::NeedMore, "cut at {cut}");
        }
        assert_eq!(parse(b"OggS\0\x02"), Header::Other);
        assert_eq!(parse(b"\x1aE\xdf\xa3"), Header::Other);
        // IMA ADPCM (tag 0x11) and 12-bit PCM: FFmpeg's WAV demuxer.
        assert_eq!(parse(&wav(0x11, 1, 8000, 4, &[], &[])), Header::Other);
        assert_eq!(parse(&wav(TAG_PCM, 1, 8000, 12, &[], &[])), Header::Other);
    }

    #[test]
    fn the_reader_skips_the_header_and_stops_at_the_data_length() {
        let mut w = wav(TAG_PCM, 1, 16_000, 16, &[], &[10, 11, 12, 13]);
        w.extend_from_slice(b"LIST\x04\0\0\0tail");
        let (mut r, found) = sniff(io::Cursor::new(w)).unwrap();
        assert_eq!(found.map(|p| p.demuxer), Some("s16le"));
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, [10, 11, 12, 13]);
        // Not a WAV: every byte comes back.
        let ogg = b"OggS and more bytes".to_vec();
        let (mut r, found) = sniff(io::Cursor::new(ogg.clone())).unwrap();
        assert_eq!(found, None);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, ogg);
    }
}
