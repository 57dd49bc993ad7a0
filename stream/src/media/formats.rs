//! The FFmpeg demuxers a client's bytes may be read with.
//!
//! FFmpeg guesses the format of what it is given, and some of its demuxers
//! read more than those bytes: a DASH or HLS manifest, an `ffconcat` script,
//! an SDP description or an image-sequence pattern makes the demuxer open the
//! files, URLs or UDP ports it names, on the server. Only audio and video
//! containers and elementary streams, which carry their media inside, are
//! accepted; and no demuxer may open anything (see
//! [`NO_PROTOCOLS`]).

/// Demuxers accepted, as FFmpeg names them (some names list several
/// formats: `matroska,webm` is one demuxer).
pub const ACCEPTED: &[&str] = &[
    // containers
    "matroska,webm",
    "mov,mp4,m4a,3gp,3g2,mj2",
    "mpegts",
    "mpeg",
    "ogg",
    "wav",
    "w64",
    "aiff",
    "caf",
    "au",
    "voc",
    "nistsphere",
    "flv",
    "live_flv",
    "avi",
    "asf",
    "mxf",
    "nut",
    "rm",
    "wtv",
    "dv",
    "ivf",
    "smjpeg",
    "mpjpeg",
    "yuv4mpegpipe",
    // audio streams
    "mp3",
    "flac",
    "aac",
    "loas",
    "ac3",
    "eac3",
    "dts",
    "truehd",
    "mlp",
    "amr",
    "amrnb",
    "amrwb",
    "gsm",
    "g722",
    "g723_1",
    "g726",
    "g726le",
    "g729",
    "ilbc",
    "codec2",
    "sbc",
    "wv",
    "ape",
    "tta",
    "tak",
    "mpc",
    "mpc8",
    "oma",
    "xwma",
    "dsf",
    "shn",
    "qcp",
    // headerless G.711 at 8 kHz mono, as telephone systems send it; by hint
    // only (probing never picks headerless audio)
    "alaw",
    "mulaw",
    // video streams
    "h264",
    "hevc",
    "av1",
    "obu",
    "vc1",
    "mpegvideo",
    "m4v",
    "mjpeg",
];

/// FFmpeg's headerless PCM demuxers other than G.711: refused as hints, with
/// a pointer to `RawPcmInput` (FFmpeg would read them as 44.1 kHz mono).
const RAW_PCM: &[&str] = &[
    "u8", "s8", "s16le", "s16be", "u16le", "u16be", "s24le", "s24be", "u24le", "u24be", "s32le",
    "s32be", "u32le", "u32be", "f32le", "f32be", "f64le", "f64be",
];

/// A protocol whitelist no protocol matches (names never hold a `-`), so a
/// demuxer that tries to open a file or URL is refused.
pub const NO_PROTOCOLS: &str = "avlm-none";

/// FFmpeg's `format_whitelist` for probing client bytes.
pub fn whitelist() -> String {
    ACCEPTED.join(",")
}

/// Every single format name the accepted demuxers answer to.
fn names() -> impl Iterator<Item = &'static str> {
    ACCEPTED.iter().flat_map(|d| d.split(','))
}

/// Checks a client's format hint (one or more comma-separated demuxer
/// names); the error says what is wrong and what is accepted.
pub fn check_hint(hint: &str) -> Result<(), String> {
    for name in hint.split(',') {
        if name.is_empty() {
            return Err(format!("{hint:?} has an empty demuxer name"));
        }
        if RAW_PCM.contains(&name) {
            return Err(format!(
                "{name:?} is headerless PCM, whose sample rate and channels a demuxer name \
                 cannot give: send it as raw_pcm (RawPcmInput: s16le or f32le, rate, channels); \
                 of the headerless formats, format_hint takes only G.711 \"mulaw\" and \"alaw\" \
                 (8 kHz mono)"
            ));
        }
        if !names().any(|n| n == name) {
            return Err(format!(
                "{name:?} is not a demuxer this server reads client media with; accepted: {}",
                names().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    Ok(())
}

/// What FFmpeg's prober makes of some bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probed {
    /// The demuxer's name, e.g. `matroska,webm`.
    pub name: String,
    /// Its description, e.g. `Matroska / WebM`.
    pub long_name: String,
}

impl Probed {
    /// Whether the demuxer is one client media may be read with.
    pub fn accepted(&self) -> bool {
        ACCEPTED.contains(&self.name.as_str())
    }
}

/// Guesses the format of a stream's first bytes as FFmpeg's probing does
/// (every demuxer, not only the accepted ones); `None` when nothing fits.
pub fn probe(head: &[u8]) -> Option<Probed> {
    if head.is_empty() {
        return None;
    }
    let size = i32::try_from(head.len()).ok()?;
    // FFmpeg reads up to AVPROBE_PADDING_SIZE zero bytes past the end.
    let mut buf = head.to_vec();
    buf.resize(
        head.len() + ffmpeg_next::ffi::AVPROBE_PADDING_SIZE as usize,
        0,
    );
    let data = ffmpeg_next::ffi::AVProbeData {
        filename: c"".as_ptr(),
        buf: buf.as_mut_ptr(),
        buf_size: size,
        mime_type: std::ptr::null(),
    };
    let mut score = 0;
    // SAFETY: `data` points at `buf`, padded as FFmpeg requires, and both
    // outlive the call; the returned format is static FFmpeg data.
    let format = unsafe { ffmpeg_next::ffi::av_probe_input_format3(&data, 1, &mut score) };
    if format.is_null() {
        return None;
    }
    // SAFETY: a registered demuxer has a NUL-terminated static name and,
    // when not null, long name.
    let text = |p: *const std::ffi::c_char| {
        (!p.is_null()).then(|| {
            unsafe { std::ffi::CStr::from_ptr(p) }
                .to_string_lossy()
                .into_owned()
        })
    };
    let (name, long_name) = unsafe { (text((*format).name)?, text((*format).long_name)) };
    Some(Probed {
        long_name: long_name.unwrap_or_else(|| name.clone()),
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probing_names_what_the_bytes_are() {
        crate::media::container::init_ffmpeg().unwrap();
        let mut wav = b"RIFF\x24\x00\x00\x00WAVEfmt ".to_vec();
        wav.extend_from_slice(&[
            16, 0, 0, 0, 1, 0, 1, 0, 0x80, 0x3e, 0, 0, 0, 0x7d, 0, 0, 2, 0, 16, 0,
        ]);
        wav.extend_from_slice(b"data\x00\x00\x00\x00");
        let p = probe(&wav).expect("a WAV header");
        assert_eq!(p.name, "wav");
        assert!(p.accepted());
        let script = probe(b"ffconcat version 1.0\nfile 'a.wav'\n").expect("an ffconcat script");
        assert_eq!(script.name, "concat");
        assert!(!script.accepted());
        assert_eq!(probe(b""), None);
    }

    #[test]
    fn hints_name_accepted_demuxers_only() {
        for ok in ["matroska", "webm", "mp4", "mpegts", "wav,ogg", "mulaw"] {
            assert_eq!(check_hint(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("dash", "\"dash\" is not"),
            ("hls", "\"hls\" is not"),
            ("concat", "\"concat\" is not"),
            ("sdp", "\"sdp\" is not"),
            ("image2", "\"image2\" is not"),
            ("wav,,ogg", "empty demuxer name"),
            ("lavfi", "accepted: matroska, webm"),
            ("s16le", "send it as raw_pcm"),
            ("wav,f32le", "send it as raw_pcm"),
        ] {
            let err = check_hint(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn every_accepted_demuxer_exists_in_the_linked_ffmpeg() {
        crate::media::container::init_ffmpeg().unwrap();
        for name in names() {
            let c = std::ffi::CString::new(name).unwrap();
            // SAFETY: a NUL-terminated name; the result is only compared with null.
            let found = unsafe { ffmpeg_next::ffi::av_find_input_format(c.as_ptr()) };
            assert!(!found.is_null(), "FFmpeg has no demuxer {name:?}");
        }
    }
}
