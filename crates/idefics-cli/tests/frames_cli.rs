//! `idefics ask --frames` on the tiny SmolVLM2-style checkpoint (model_type smolvlm): several image files, or one
//! animated GIF / WebP, become one video in the prompt (transformers' video text: frame count in words,
//! `Frame from MM:SS:` before each unsplit frame); other families are refused with a clear message.

mod common;

use common::{idefics, idefics_ok, root};
use idefics::processor::video::DEFAULT_VIDEO_FPS;
use idefics::processor::{
    decode_image_file, ChatMessage, ContentPart, DecodeLimits, FamilyProcessor, VideoClip,
    VideoProcessorSettings,
};
use std::path::PathBuf;

fn model(case: &str) -> PathBuf {
    root().join("tests/fixtures/idefics3/e2e").join(case)
}

/// The tiny SmolVLM checkpoint with a video processor section in processor_config.json (SmolVLM2 checkpoints ship
/// one; without it the class defaults would make 364 px frames, which this 32 px vision tower cannot take).
fn video_model() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("smolvlm");
    std::fs::create_dir_all(&dir).unwrap();
    for f in std::fs::read_dir(model("smolvlm_tied")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
    }
    let path = dir.join("processor_config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg["video_processor"] = serde_json::json!({
        "max_image_size": {"longest_edge": 32},
        "size": {"longest_edge": 64},
        "video_sampling": {"max_frames": 64, "fps": 1},
    });
    std::fs::write(&path, cfg.to_string()).unwrap();
    (tmp, dir)
}

fn file(rel: &str) -> PathBuf {
    root().join(rel)
}

const FRAMES: [&str; 3] = [
    "tests/fixtures/images_e2e/landscape_120x80.png",
    "tests/fixtures/images_e2e/portrait_45x100.jpg",
    "tests/fixtures/images_e2e/square_33x33.png",
];

fn ask_json(args: &[&str]) -> serde_json::Value {
    let o = idefics_ok(args);
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn frames_become_one_video_in_the_prompt() {
    let (_tmp, dir) = video_model();
    let paths: Vec<String> = FRAMES
        .iter()
        .map(|f| file(f).to_str().unwrap().to_string())
        .collect();
    let mut args = vec![
        "ask",
        "--model",
        dir.to_str().unwrap(),
        "--max-new-tokens",
        "3",
        "--json",
        "--frames",
    ];
    args.extend(paths.iter().map(String::as_str));
    // `--` ends the list of frames.
    args.extend(["--", "What happens?"]);
    let v = ask_json(&args);

    // The same prompt through the library: the frames numbered 0..n at 24 fps, as transformers numbers frames
    // given without video metadata.
    let processor = FamilyProcessor::from_dir(&dir).unwrap();
    let frames: Vec<_> = FRAMES
        .iter()
        .map(|f| decode_image_file(&file(f), &DecodeLimits::default()).unwrap())
        .collect();
    let clip = VideoClip::from_indices(&[0, 1, 2], DEFAULT_VIDEO_FPS, None);
    let msg = ChatMessage::parts(
        "user",
        vec![
            ContentPart::Video {},
            ContentPart::Text {
                text: "What happens?".into(),
            },
        ],
    );
    let settings = VideoProcessorSettings::from_dir(&dir).unwrap();
    let expected = processor
        .process_video_chat(&[msg], true, &[(frames, clip)], &settings)
        .unwrap();
    let text = processor
        .tokenizer()
        .inner()
        .decode(&expected.input_ids, false)
        .unwrap();
    assert!(text.contains("three frames"), "{text}");
    assert!(text.contains("Frame from 00:00:"), "{text}");
    assert_eq!(
        v["prompt_tokens"].as_u64().unwrap() as usize,
        expected.input_ids.len(),
        "{v}"
    );
    // Every frame is one unsplit image: image_seq_len (4) tokens each.
    assert_eq!(v["image_tokens"], 3 * 4, "{v}");
    assert_eq!(expected.images.pixel_values_shape[1], 3);
    assert!(v["completion_tokens"].as_u64().unwrap() >= 1, "{v}");
}

#[test]
fn an_animated_gif_or_webp_gives_its_frames() {
    let (_tmp, dir) = video_model();
    for anim in [
        "tests/fixtures/images/files/gif_animated.gif",
        "tests/fixtures/images/files/webp_animated.webp",
    ] {
        let v = ask_json(&[
            "ask",
            "--model",
            dir.to_str().unwrap(),
            "--max-new-tokens",
            "2",
            "--json",
            "Describe.",
            "--frames",
            file(anim).to_str().unwrap(),
        ]);
        // Both animations have 2 frames.
        assert_eq!(v["image_tokens"], 2 * 4, "{anim}: {v}");
    }
}

#[test]
fn frames_need_a_smolvlm_checkpoint() {
    let o = idefics(&[
        "ask",
        "--model",
        model("idefics3_llama3").to_str().unwrap(),
        "What happens?",
        "--frames",
        file(FRAMES[0]).to_str().unwrap(),
        file(FRAMES[1]).to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("smolvlm") && err.contains("idefics3"), "{err}");
}

#[test]
fn frames_and_images_do_not_mix() {
    let o = idefics(&[
        "ask",
        "--model",
        model("smolvlm_tied").to_str().unwrap(),
        "--image",
        file(FRAMES[0]).to_str().unwrap(),
        "Q?",
        "--frames",
        file(FRAMES[1]).to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot be used with"));
}

#[test]
fn an_unreadable_frame_is_named() {
    let o = idefics(&[
        "ask",
        "--model",
        model("smolvlm_tied").to_str().unwrap(),
        "Q?",
        "--frames",
        file(FRAMES[0]).to_str().unwrap(),
        "/nonexistent/frame.png",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/frame.png"));
}

#[test]
fn chat_about_a_video_keeps_it_across_turns() {
    let (_tmp, dir) = video_model();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_idefics"))
        .args([
            "chat",
            "--model",
            dir.to_str().unwrap(),
            "--max-new-tokens",
            "2",
            "--frames",
            file(FRAMES[0]).to_str().unwrap(),
            file(FRAMES[1]).to_str().unwrap(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let stdin = child.stdin.as_mut().unwrap();
        let image = file(FRAMES[2]);
        write!(
            stdin,
            "What happens?\n/image {}\nAnd then?\n/quit\n",
            image.display()
        )
        .unwrap();
    }
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    // Two answered turns, the image refused, no other error.
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).lines().count(),
        2,
        "{err}"
    );
    assert!(err.contains("images cannot be added"), "{err}");
    assert_eq!(err.matches("error:").count(), 1, "{err}");
}
