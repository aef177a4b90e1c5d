//! SmolVLM2 videos: frames given with their timestamps become single (never split) image blocks inside
//! transformers' video text, and the frame-sampling rule of `SmolVLMVideoProcessor`
//! (src/transformers/models/smolvlm/processing_smolvlm.py `replace_video_token`,
//! src/transformers/models/smolvlm/video_processing_smolvlm.py `sample_frames`, transformers 5.24).
//!
//! A `<video>` of N frames becomes
//! `You are provided the following series of {N in words} frames from a {H:MM:SS} [H:MM:SS] video.\n`, then per
//! frame `\nFrame from {MM:SS}:` + the single-image block, then `\n\n`. The frame pixels go through
//! [`crate::image::Idefics3ImageProcessor::video_frame`].

use crate::idefics3_prompt::image_prompt_string;
use crate::image::TileGrid;
use crate::prompt::PromptError;

/// The text SmolVLM's processor writes for a video.
pub const VIDEO_TOKEN: &str = "<video>";
/// transformers' `fps` when a video's metadata has none (a warning there, the default here).
pub const DEFAULT_VIDEO_FPS: f64 = 24.0;

/// What the prompt needs to know about one video: when each kept frame was taken, and how long the video is.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoClip {
    /// Seconds from the start of the video, one per frame given to the model.
    pub timestamps: Vec<f64>,
    /// Length of the video in seconds; `None`: the last timestamp (transformers' fallback).
    pub duration: Option<f64>,
}

impl VideoClip {
    /// Timestamps of frames `indices` of a video decoded at `fps` frames per second (`index / fps`).
    /// Frames given without video metadata (`--frames a.png b.png`) are, in transformers 5.24
    /// (video_utils.py `make_batched_metadata`, processing_smolvlm.py), indices `0..n` at [`DEFAULT_VIDEO_FPS`]
    /// with no duration.
    pub fn from_indices(indices: &[usize], fps: f64, duration: Option<f64>) -> Self {
        Self {
            timestamps: indices.iter().map(|&i| i as f64 / fps).collect(),
            duration,
        }
    }
}

/// Python's float `divmod(x, y)` for `y > 0` (CPython `float_divmod`): floor quotient and remainder.
fn py_divmod(x: f64, y: f64) -> (f64, f64) {
    let mut m = x % y;
    let mut div = (x - m) / y;
    if m != 0.0 {
        if (y < 0.0) != (m < 0.0) {
            m += y;
            div -= 1.0;
        }
    } else {
        m = 0.0f64.copysign(y);
    }
    let floordiv = if div != 0.0 {
        let f = div.floor();
        if div - f > 0.5 {
            f + 1.0
        } else {
            f
        }
    } else {
        0.0f64.copysign(x / y)
    };
    (floordiv, m)
}

/// `str(datetime.timedelta(seconds=s))` for whole non-negative seconds: `H:MM:SS`, with `N day(s), ` in front
/// from 24 hours on.
fn timedelta_str(seconds: u64) -> String {
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    let hms = format!("{}:{:02}:{:02}", rest / 3600, rest % 3600 / 60, rest % 60);
    match days {
        0 => hms,
        1 => format!("1 day, {hms}"),
        d => format!("{d} days, {hms}"),
    }
}

const ONES: [&str; 20] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];
const TENS: [&str; 10] = [
    "", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
];

fn below_thousand(n: u64) -> String {
    let below_hundred = |n: u64| -> String {
        if n < 20 {
            ONES[n as usize].to_string()
        } else if n.is_multiple_of(10) {
            TENS[(n / 10) as usize].to_string()
        } else {
            format!("{}-{}", TENS[(n / 10) as usize], ONES[(n % 10) as usize])
        }
    };
    match (n / 100, n % 100) {
        (0, r) => below_hundred(r),
        (h, 0) => format!("{} hundred", ONES[h as usize]),
        (h, r) => format!("{} hundred and {}", ONES[h as usize], below_hundred(r)),
    }
}

/// `num2words(n)` (English cardinal, num2words 0.5's `lang_EN`): "twenty-one", "one hundred and one",
/// "one thousand, two hundred and thirty-four". Exact below 10^12; the frame count of a video.
pub fn num2words_en(n: u64) -> String {
    const SCALES: [(u64, &str); 3] = [
        (1_000_000_000, "billion"),
        (1_000_000, "million"),
        (1_000, "thousand"),
    ];
    for (scale, name) in SCALES {
        if n >= scale && n < scale * 1000 {
            let (high, rest) = (n / scale, n % scale);
            let head = format!("{} {name}", below_thousand(high));
            return match rest {
                0 => head,
                r if r < 100 => format!("{head} and {}", num2words_en(r)),
                r => format!("{head}, {}", num2words_en(r)),
            };
        }
    }
    below_thousand(n.min(999))
}

/// What follows a video's last frame (`DEFAULT_MEDIA_OUTTRO`).
pub const VIDEO_OUTRO: &str = "\n\n";

/// The sentence that opens a video (`DEFAULT_VIDEO_INTRO`): frame count in words, duration as `H:MM:SS`.
pub fn video_intro(clip: &VideoClip) -> String {
    let duration = clip
        .duration
        .or_else(|| clip.timestamps.last().copied())
        .unwrap_or(0.0);
    format!(
        "You are provided the following series of {} frames from a {} [H:MM:SS] video.\n",
        num2words_en(clip.timestamps.len() as u64),
        timedelta_str(duration.max(0.0) as u64)
    )
}

/// The text before one frame's image block (`FRAME_TIMESTAMP_MESSAGE`): `\nFrame from MM:SS:`.
pub fn frame_label(timestamp: f64) -> String {
    let (minutes, seconds) = py_divmod(timestamp, 60.0);
    format!("\nFrame from {:02}:{:02}:", minutes as i64, seconds as i64)
}

/// The text a `<video>` becomes for `clip` (each frame a single-image block of `image_seq_len` tokens).
pub fn video_prompt_string(clip: &VideoClip, image_seq_len: usize) -> String {
    let mut out = video_intro(clip);
    let block = image_prompt_string(TileGrid::default(), image_seq_len);
    for &t in &clip.timestamps {
        out.push_str(&frame_label(t));
        out.push_str(&block);
    }
    out.push_str(VIDEO_OUTRO);
    out
}

/// Replace the `<video>` markers of a prompt, in order, by the texts of `clips` (one per marker).
pub fn expand_video_prompts(
    prompt: &str,
    clips: &[VideoClip],
    image_seq_len: usize,
) -> Result<String, PromptError> {
    let slots = prompt.matches(VIDEO_TOKEN).count();
    if slots != clips.len() {
        return Err(PromptError::Messages(format!(
            "the prompt has {slots} `<video>` slot(s) but {} video(s) were given",
            clips.len()
        )));
    }
    let mut parts = prompt.split(VIDEO_TOKEN);
    let mut out = parts.next().unwrap_or_default().to_string();
    for (part, clip) in parts.zip(clips) {
        out.push_str(&video_prompt_string(clip, image_seq_len));
        out.push_str(part);
    }
    Ok(out)
}

/// The video processor's settings of a SmolVLM2 checkpoint (`SmolVLMVideoProcessor`), found as transformers 5.24
/// finds them (video_processing_utils.py): the `video_processor` object nested in processor_config.json, else
/// video_preprocessor_config.json, else preprocessor_config.json. In SmolVLMVideoProcessor.__init__,
/// `video_sampling` gives `max_frames`, `fps` and the frame size, and an explicit `size` wins over
/// `video_sampling.video_size`.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoProcessorSettings {
    /// Frames are first scaled so that their long side is this (class default 4 x 364).
    pub longest_edge: usize,
    /// Then squared to this side (class default 364).
    pub max_image_size: usize,
    /// Most frames `sample_frames` keeps (`video_sampling.max_frames` / `num_frames`), if set.
    pub max_frames: Option<usize>,
    /// Frames per second `sample_frames` aims at (`video_sampling.fps` / `fps`), if set.
    pub fps: Option<f64>,
}

impl Default for VideoProcessorSettings {
    fn default() -> Self {
        Self {
            longest_edge: 4 * 364,
            max_image_size: 364,
            max_frames: None,
            fps: None,
        }
    }
}

impl VideoProcessorSettings {
    /// Read the settings of a checkpoint directory (class defaults where nothing is set).
    pub fn from_dir(dir: &std::path::Path) -> Result<Self, PromptError> {
        use crate::processor_config::read_json_if_exists;
        let nested = read_json_if_exists(&dir.join("processor_config.json"))?
            .and_then(|p| p.get("video_processor").cloned());
        let value = match nested {
            Some(v) => Some(v),
            None => match read_json_if_exists(&dir.join("video_preprocessor_config.json"))? {
                Some(v) => Some(v),
                None => read_json_if_exists(&dir.join("preprocessor_config.json"))?,
            },
        };
        Ok(value.map(|v| Self::from_value(&v)).unwrap_or_default())
    }

    /// Settings from one video-processor JSON object.
    pub fn from_value(v: &serde_json::Value) -> Self {
        let d = Self::default();
        let longest = |x: Option<&serde_json::Value>| {
            x.and_then(|s| s.get("longest_edge"))
                .and_then(serde_json::Value::as_u64)
                .map(|n| n as usize)
        };
        let sampling = v.get("video_sampling");
        let longest_edge = longest(v.get("size"))
            .or_else(|| longest(sampling.and_then(|s| s.get("video_size"))))
            .unwrap_or(d.longest_edge);
        let max_frames = sampling
            .and_then(|s| s.get("max_frames"))
            .or_else(|| v.get("num_frames"))
            .and_then(serde_json::Value::as_u64)
            .map(|n| n as usize);
        let fps = sampling
            .and_then(|s| s.get("fps"))
            .or_else(|| v.get("fps"))
            .and_then(serde_json::Value::as_f64);
        Self {
            longest_edge,
            max_image_size: longest(v.get("max_image_size")).unwrap_or(d.max_image_size),
            max_frames,
            fps,
        }
    }
}

/// A decoded video as `sample_frames` sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VideoMetadata {
    /// Frames in the file.
    pub total_num_frames: usize,
    /// Frames per second of the file.
    pub fps: f64,
    /// Seconds (usually `total_num_frames / fps`).
    pub duration: f64,
}

/// `SmolVLMVideoProcessor.sample_frames`: at most `max_frames` indices, about `target_fps` per second, skipping
/// `skip_secs` at both ends when the video is long enough, spread evenly (`np.linspace(..., dtype=int)`, unique).
pub fn sample_frame_indices(
    meta: &VideoMetadata,
    max_frames: usize,
    target_fps: f64,
    skip_secs: f64,
) -> Vec<usize> {
    let total = meta.total_num_frames;
    if total == 0 {
        return Vec::new();
    }
    // Python's round() rounds halves to even.
    let estimated = (target_fps * meta.duration).round_ties_even();
    let desired = (estimated.min(max_frames as f64).max(1.0)) as usize;
    let (mut start, mut end) = (0i64, total as i64 - 1);
    if skip_secs > 0.0 && (meta.duration - 2.0 * skip_secs) > max_frames as f64 * target_fps {
        start = (skip_secs * meta.fps) as i64;
        end = (total as f64 - skip_secs * meta.fps) as i64;
    }
    start = start.max(0);
    end = end.min(total as i64 - 1);
    if start >= end {
        (start, end) = (0, total as i64 - 1);
    }
    let (s, e) = (start as f64, end as f64);
    let mut indices: Vec<usize> = if desired == 1 {
        vec![start as usize]
    } else {
        let step = (e - s) / (desired - 1) as f64;
        (0..desired)
            .map(|i| {
                let y = if i == desired - 1 {
                    e
                } else {
                    i as f64 * step + s
                };
                y.floor() as usize
            })
            .collect()
    };
    indices.sort_unstable();
    indices.dedup();
    indices
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_durations() {
        assert_eq!(num2words_en(0), "zero");
        assert_eq!(num2words_en(21), "twenty-one");
        assert_eq!(num2words_en(64), "sixty-four");
        assert_eq!(num2words_en(1001), "one thousand and one");
        assert_eq!(timedelta_str(75), "0:01:15");
        assert_eq!(timedelta_str(90_061), "1 day, 1:01:01");
    }

    #[test]
    fn video_settings_precedence() {
        let v = serde_json::json!({
            "video_sampling": {"fps": 1, "max_frames": 64, "video_size": {"longest_edge": 512}},
            "max_image_size": {"longest_edge": 512}
        });
        let s = VideoProcessorSettings::from_value(&v);
        assert_eq!((s.longest_edge, s.max_image_size), (512, 512));
        assert_eq!((s.max_frames, s.fps), (Some(64), Some(1.0)));
        let v = serde_json::json!({"size": {"longest_edge": 2048}, "video_sampling": {"video_size": {"longest_edge": 512}}});
        assert_eq!(VideoProcessorSettings::from_value(&v).longest_edge, 2048);
        assert_eq!(
            VideoProcessorSettings::from_value(&serde_json::json!({})),
            VideoProcessorSettings::default()
        );
    }

    #[test]
    fn python_divmod() {
        assert_eq!(py_divmod(125.5, 60.0), (2.0, 5.5));
        assert_eq!(py_divmod(59.999, 60.0), (0.0, 59.999));
        assert_eq!(py_divmod(0.0, 60.0), (0.0, 0.0));
    }
}
