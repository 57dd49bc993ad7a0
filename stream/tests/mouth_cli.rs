//! `avlm mouth`: a clip made with FFmpeg from the real face photo of the mouth goldens (the
//! face moving across a 30 fps frame, hidden for 0.4 s) becomes 96x96 H.264 crops at 25 fps
//! in MP4, the hidden frames filled from the detections around them; a clip without a face
//! gives centre crops and says so.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::avlm;

fn tmp(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name)
}

fn photo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/mouth/astronaut.ppm")
}

fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-y"])
        .args(args)
        .output()
        .expect("ffmpeg (run tools/setup.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn probe(path: &Path) -> serde_json::Value {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-show_streams",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The crops as RGB frames, decoded back.
fn frames(path: &Path) -> Vec<Vec<u8>> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
        .chunks_exact(96 * 96 * 3)
        .map(<[u8]>::to_vec)
        .collect()
}

fn spread(rgb: &[u8]) -> f64 {
    let n = rgb.len() as f64;
    let mean = rgb.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    (rgb.iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n)
        .sqrt()
}

#[test]
fn mouth_writes_25_fps_crops_of_a_moving_face_and_fills_the_hidden_frames() {
    let clip = tmp("mouth_moving.mkv");
    let photo = photo();
    ffmpeg(&[
        "-loop",
        "1",
        "-framerate",
        "30",
        "-i",
        photo.to_str().unwrap(),
        "-filter_complex",
        "color=c=0x5a646e:s=320x240:r=30:d=3[bg];[0:v]scale=150:150[f];\
         [bg][f]overlay=x='20+40*t':y=40:shortest=1:enable='not(between(t,1.0,1.4))'",
        "-t",
        "3",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        clip.to_str().unwrap(),
    ]);
    let crops = tmp("mouth_moving.crops.mp4");
    let out = avlm()
        .arg("mouth")
        .arg(&clip)
        .arg("--out")
        .arg(&crops)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("75 crops out at 25 fps"), "{stdout}");
    assert!(stdout.contains("no face in 0"), "{stdout}");
    // 0.4 s hidden at 25 fps: 10 frames filled (one either side may round).
    let filled: u32 = stdout
        .split("interpolated or held in ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!((9..=11).contains(&filled), "{stdout}");

    let info = probe(&crops);
    let video = &info["streams"][0];
    assert_eq!(video["codec_name"], "h264");
    assert_eq!(video["pix_fmt"], "yuv420p");
    assert_eq!(
        (video["width"].as_u64(), video["height"].as_u64()),
        (Some(96), Some(96))
    );
    assert_eq!(video["avg_frame_rate"], "25/1");
    assert_eq!(video["nb_read_frames"], "75");
    let rgb = frames(&crops);
    assert_eq!(rgb.len(), 75);
    // A face frame is a mouth, not the flat background.
    assert!(spread(&rgb[10]) > 20.0, "{}", spread(&rgb[10]));
}

#[test]
fn mouth_without_a_face_writes_centre_crops_and_says_so() {
    let clip = tmp("mouth_none.webm");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "color=c=0x5a646e:s=160x120:r=25:d=1",
        "-c:v",
        "libvpx",
        clip.to_str().unwrap(),
    ]);
    let crops = tmp("mouth_none.crops.mp4");
    let out = avlm()
        .arg("mouth")
        .arg(&clip)
        .arg("--out")
        .arg(&crops)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("25 crops out"), "{stdout}");
    assert!(stdout.contains("face found in 0,"), "{stdout}");
    assert!(stdout.contains("no face in 25"), "{stdout}");
    assert_eq!(frames(&crops).len(), 25);
}

#[test]
fn mouth_refuses_a_file_without_video() {
    let clip = tmp("mouth_audio.ogg");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "sine=d=1",
        "-c:a",
        "libopus",
        clip.to_str().unwrap(),
    ]);
    let out = avlm()
        .arg("mouth")
        .arg(&clip)
        .arg("--out")
        .arg(tmp("mouth_audio.crops.mp4"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("video"), "{stderr}");
}
