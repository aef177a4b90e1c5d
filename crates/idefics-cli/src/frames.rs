//! `--frames`: SmolVLM2 video input from image files or one animated GIF / WebP.
//!
//! Several files are the frames of one video in the given order. transformers, given a list of frames without
//! video metadata, numbers them `0..n` at 24 fps with no duration (video_utils.py `make_batched_metadata`,
//! processing_smolvlm.py), so the prompt's `Frame from MM:SS:` labels are `index / 24` s
//! ([`VideoClip::from_indices`]). One animated GIF / WebP gives its frames at the times the animation shows them;
//! when it has more frames than the checkpoint's video processor keeps (`max_frames`), they are chosen with
//! SmolVLM's sampling rule ([`sample_frame_indices`], at the processor's `fps`). transformers reads animations
//! with a video decoder (torchcodec / PyAV), not Pillow, so that path has no bit-exact reference.

use anyhow::{bail, Context, Result};
use idefics::processor::image::decode_animation;
use idefics::processor::video::{sample_frame_indices, VideoMetadata, DEFAULT_VIDEO_FPS};
use idefics::processor::{
    decode_image_file, ChatMessage, ContentPart, DecodeLimits, RgbImage, VideoClip,
    VideoProcessorSettings,
};
use std::path::{Path, PathBuf};

/// The frames of one video and when each is shown.
#[derive(Debug, Clone)]
pub struct VideoFrames {
    pub frames: Vec<RgbImage>,
    pub clip: VideoClip,
}

/// The video processor settings of a checkpoint (`processor_config.json` `video_processor`, or the standalone
/// files; SmolVLM's defaults without them).
pub fn video_settings(dir: &Path) -> Result<VideoProcessorSettings> {
    VideoProcessorSettings::from_dir(dir)
        .with_context(|| format!("video processor settings of {}", dir.display()))
}

/// Reads `--frames`: one file is an animation (or a still image: one frame), several are still frames.
pub fn load_frames(paths: &[PathBuf], settings: &VideoProcessorSettings) -> Result<VideoFrames> {
    let limits = DecodeLimits::default();
    match paths {
        [] => bail!("--frames needs at least one file"),
        [single] => {
            let bytes =
                std::fs::read(single).with_context(|| format!("--frames {}", single.display()))?;
            let animation = decode_animation(&bytes, &limits)
                .with_context(|| format!("--frames {}", single.display()))?;
            let timestamps: Vec<f64> = animation.iter().map(|f| f.timestamp).collect();
            let keep = sampled_indices(&timestamps, settings);
            let mut frames = Vec::with_capacity(keep.len());
            let mut kept_times = Vec::with_capacity(keep.len());
            let mut animation: Vec<Option<_>> = animation.into_iter().map(Some).collect();
            for i in keep {
                if let Some(frame) = animation.get_mut(i).and_then(Option::take) {
                    frames.push(frame.image);
                    kept_times.push(frame.timestamp);
                }
            }
            Ok(VideoFrames {
                frames,
                clip: VideoClip {
                    timestamps: kept_times,
                    duration: None,
                },
            })
        }
        many => {
            let frames = many
                .iter()
                .map(|p| {
                    decode_image_file(p, &limits)
                        .with_context(|| format!("--frames {}", p.display()))
                })
                .collect::<Result<Vec<_>>>()?;
            let indices: Vec<usize> = (0..frames.len()).collect();
            Ok(VideoFrames {
                frames,
                clip: VideoClip::from_indices(&indices, DEFAULT_VIDEO_FPS, None),
            })
        }
    }
}

/// The frames of an animation to keep: all of them, unless there are more than the processor's `max_frames`;
/// then SmolVLM's sampling over the animation's frame rate (frames / shown time).
fn sampled_indices(timestamps: &[f64], settings: &VideoProcessorSettings) -> Vec<usize> {
    let n = timestamps.len();
    let Some(max_frames) = settings.max_frames.filter(|&m| m > 0 && n > m) else {
        return (0..n).collect();
    };
    let last = timestamps.last().copied().unwrap_or(0.0);
    let fps = if last > 0.0 {
        (n - 1) as f64 / last
    } else {
        DEFAULT_VIDEO_FPS
    };
    let meta = VideoMetadata {
        total_num_frames: n,
        fps,
        duration: n as f64 / fps,
    };
    sample_frame_indices(&meta, max_frames, settings.fps.unwrap_or(1.0), 0.0)
}

/// A user turn with the video first, then the text (SmolVLM2's model card layout).
pub fn video_message(text: &str) -> ChatMessage {
    ChatMessage::parts(
        "user",
        vec![
            ContentPart::Video {},
            ContentPart::Text {
                text: text.to_string(),
            },
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn animations_longer_than_max_frames_are_sampled() {
        let settings = VideoProcessorSettings {
            max_frames: Some(4),
            fps: Some(1.0),
            ..Default::default()
        };
        // 10 frames over 9 s: 1 fps, 10 s long; 4 frames spread over the whole animation.
        let times: Vec<f64> = (0..10).map(f64::from).collect();
        let kept = sampled_indices(&times, &settings);
        assert_eq!(kept.len(), 4);
        assert_eq!(kept.first(), Some(&0));
        assert_eq!(kept.last(), Some(&9));
        // Within the limit, every frame.
        assert_eq!(sampled_indices(&times[..3], &settings), vec![0, 1, 2]);
    }
}
