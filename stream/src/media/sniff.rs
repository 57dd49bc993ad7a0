//! Early detection of MP4 files that cannot be streamed.
//!
//! A plain MP4 writes its index (`moov`) after the media data (`mdat`); a
//! demuxer reading a stream would have to buffer the whole file before it
//! could decode anything. Fragmented MP4 (`moov` then `moof`/`mdat` pairs)
//! and faststart MP4 (`moov` before `mdat`) stream fine. This scanner follows
//! the top-level box headers as bytes arrive and reports the problem the
//! moment an `mdat` shows up before any `moov`, without buffering data.

/// What the scanner concluded so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mp4Layout {
    /// Not enough bytes seen yet, or not an MP4 at all.
    Undecided,
    /// Streamable (moov first, or not an ISO-BMFF file).
    Streamable,
    /// `mdat` precedes `moov`: the index is at the end.
    IndexAtEnd,
}

/// Incremental top-level box scanner.
#[derive(Debug, Clone)]
pub struct Mp4Sniffer {
    /// Bytes of the current box header collected so far.
    header: Vec<u8>,
    /// Bytes left to skip in the current box's body.
    skip: u64,
    boxes_seen: u32,
    verdict: Mp4Layout,
}

impl Default for Mp4Sniffer {
    fn default() -> Self {
        Mp4Sniffer {
            header: Vec::with_capacity(16),
            skip: 0,
            boxes_seen: 0,
            verdict: Mp4Layout::Undecided,
        }
    }
}

impl Mp4Sniffer {
    pub fn verdict(&self) -> Mp4Layout {
        self.verdict
    }

    /// Feeds the next bytes of the stream.
    pub fn push(&mut self, mut data: &[u8]) -> Mp4Layout {
        while self.verdict == Mp4Layout::Undecided && !data.is_empty() {
            if self.skip > 0 {
                let n = (self.skip.min(data.len() as u64)) as usize;
                self.skip -= n as u64;
                data = &data[n..];
                continue;
            }
            let want = if self.header.len() >= 8 && self.size32() == 1 {
                16
            } else {
                8
            };
            let n = (want - self.header.len()).min(data.len());
            self.header.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.header.len() < want {
                continue;
            }
            if want == 8 && self.size32() == 1 {
                continue; // 64-bit size follows
            }
            self.finish_header();
        }
        self.verdict
    }

    fn size32(&self) -> u32 {
        u32::from_be_bytes([
            self.header[0],
            self.header[1],
            self.header[2],
            self.header[3],
        ])
    }

    fn finish_header(&mut self) {
        let kind = [
            self.header[4],
            self.header[5],
            self.header[6],
            self.header[7],
        ];
        let (size, header_len) = match self.size32() {
            1 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.header[8..16]);
                (u64::from_be_bytes(b), 16u64)
            }
            // Size 0: the box runs to the end of the file.
            0 => (u64::MAX, 8),
            s => (u64::from(s), 8),
        };
        self.header.clear();
        self.boxes_seen += 1;
        let printable = kind.iter().all(|c| c.is_ascii_graphic() || *c == b' ');
        if !printable || size < header_len {
            // Not ISO-BMFF framing: leave the verdict to FFmpeg.
            self.verdict = Mp4Layout::Streamable;
            return;
        }
        if self.boxes_seen == 1 && &kind != b"ftyp" && &kind != b"styp" {
            self.verdict = Mp4Layout::Streamable;
            return;
        }
        match &kind {
            b"moov" | b"moof" => self.verdict = Mp4Layout::Streamable,
            b"mdat" => self.verdict = Mp4Layout::IndexAtEnd,
            _ => self.skip = size - header_len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bx(kind: &[u8; 4], body: usize) -> Vec<u8> {
        let mut v = ((body + 8) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(kind);
        v.extend(std::iter::repeat_n(0u8, body));
        v
    }

    fn feed_bytewise(data: &[u8]) -> Mp4Layout {
        let mut s = Mp4Sniffer::default();
        for b in data {
            s.push(std::slice::from_ref(b));
        }
        s.verdict()
    }

    #[test]
    fn index_at_end_is_detected_even_byte_by_byte() {
        let file = [
            bx(b"ftyp", 20),
            bx(b"free", 8),
            bx(b"mdat", 100),
            bx(b"moov", 50),
        ]
        .concat();
        assert_eq!(feed_bytewise(&file), Mp4Layout::IndexAtEnd);
        let mut s = Mp4Sniffer::default();
        assert_eq!(s.push(&file), Mp4Layout::IndexAtEnd);
    }

    #[test]
    fn faststart_and_fragmented_stream() {
        let faststart = [bx(b"ftyp", 20), bx(b"moov", 50), bx(b"mdat", 100)].concat();
        assert_eq!(feed_bytewise(&faststart), Mp4Layout::Streamable);
        let fragmented = [
            bx(b"ftyp", 20),
            bx(b"moov", 50),
            bx(b"moof", 30),
            bx(b"mdat", 100),
        ]
        .concat();
        assert_eq!(feed_bytewise(&fragmented), Mp4Layout::Streamable);
    }

    #[test]
    fn other_containers_are_left_alone() {
        assert_eq!(
            feed_bytewise(&[0x1a, 0x45, 0xdf, 0xa3, 1, 2, 3, 4, 5]),
            Mp4Layout::Streamable
        );
        assert_eq!(
            feed_bytewise(b"RIFF\x24\x00\x00\x00WAVEfmt "),
            Mp4Layout::Streamable
        );
        assert_eq!(feed_bytewise(&[0x47; 400]), Mp4Layout::Streamable);
    }

    #[test]
    fn large_size_boxes_are_skipped() {
        let mut mdat64 = 1u32.to_be_bytes().to_vec();
        mdat64.extend_from_slice(b"free");
        mdat64.extend_from_slice(&24u64.to_be_bytes());
        mdat64.extend_from_slice(&[0u8; 8]);
        let file = [bx(b"ftyp", 12), mdat64, bx(b"mdat", 4)].concat();
        assert_eq!(feed_bytewise(&file), Mp4Layout::IndexAtEnd);
    }
}
