//! Every bad image input gives a clear one-line error (never a panic), and edge-size images that the
//! reference accepts are accepted (the inputs that break peer tools: empty or mislabelled data, unsupported
//! formats, truncated or corrupt files, decompression bombs, 1-3 pixel and extreme-aspect images).

use std::path::{Path, PathBuf};

use idefics_processor::image::{
    decode_image, decode_image_file, DecodeLimits, Idefics2ImageProcessor,
    Idefics2ImageProcessorConfig, ImageError, RgbImage,
};

fn file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/images/files")
        .join(name)
}

fn bytes(name: &str) -> Vec<u8> {
    std::fs::read(file(name)).unwrap()
}

fn decode(b: &[u8]) -> Result<RgbImage, ImageError> {
    decode_image(b, &DecodeLimits::default())
}

/// The error message, checked to be one line and to contain every `needle`.
fn error_of(r: Result<RgbImage, ImageError>, needles: &[&str]) -> ImageError {
    let e = r.expect_err("expected an error");
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "multi-line error: {msg}");
    for n in needles {
        assert!(
            msg.to_lowercase().contains(&n.to_lowercase()),
            "error {msg:?} does not mention {n:?}"
        );
    }
    e
}

fn idefics2_8b() -> Idefics2ImageProcessor {
    let cfg = Idefics2ImageProcessorConfig {
        do_image_splitting: true,
        ..Default::default()
    };
    Idefics2ImageProcessor::new(cfg).unwrap()
}

#[test]
fn empty_data() {
    assert!(matches!(
        error_of(decode(&[]), &["empty"]),
        ImageError::Empty
    ));
}

#[test]
fn text_labelled_as_an_image() {
    error_of(
        decode(b"this is not an image, just text"),
        &["unrecognised", "74 68 69 73"],
    );
}

#[test]
fn wav_file_in_riff_container() {
    error_of(decode(&bytes("wav_riff.wav")), &["unsupported", "WAVE"]);
}

#[test]
fn heic_is_unsupported() {
    error_of(
        decode(&bytes("heic_header.heic")),
        &["unsupported image format", "HEIC"],
    );
}

#[test]
fn avif_is_unsupported() {
    error_of(
        decode(&bytes("avif_header.avif")),
        &["unsupported image format", "AVIF"],
    );
}

#[test]
fn tiff_is_unsupported() {
    error_of(
        decode(&bytes("tiff_rgb.tiff")),
        &["unsupported image format", "TIFF"],
    );
}

#[test]
fn svg_is_unsupported() {
    error_of(
        decode(&bytes("svg_image.svg")),
        &["unsupported image format", "SVG"],
    );
}

#[test]
fn truncated_files_of_every_format() {
    for name in [
        "png_rgb.png",
        "jpeg_baseline_420.jpg",
        "jpeg_progressive.jpg",
        "gif_single.gif",
        "webp_lossless_rgb.webp",
        "webp_lossy.webp",
        "bmp_rgb.bmp",
    ] {
        let full = bytes(name);
        for keep in [full.len() / 2, full.len() * 9 / 10, 20] {
            let r = decode(&full[..keep]);
            // Pillow refuses all of these ("image file is truncated" for JPEG), so must we.
            if name.ends_with(".jpg") && keep > 20 {
                error_of(r, &["JPEG", "image file is truncated"]);
                continue;
            }
            error_of(r, &[]);
        }
    }
}

#[test]
fn corrupt_png_body() {
    let mut b = bytes("png_rgb.png");
    let n = b.len();
    for x in &mut b[60..n - 20] {
        *x ^= 0x5A;
    }
    error_of(decode(&b), &["PNG"]);
}

#[test]
fn decompression_bomb_header_is_refused_before_decoding() {
    let e = error_of(
        decode(&bytes("png_bomb_header.png")),
        &["100000x100000", "limit"],
    );
    assert!(matches!(e, ImageError::TooManyPixels { .. }));
}

#[test]
fn pixel_cap_is_configurable() {
    let limits = DecodeLimits {
        max_pixels: 1000,
        ..Default::default()
    };
    // 45 x 31 = 1395 pixels > 1000.
    error_of(
        decode_image(&bytes("png_rgb.png"), &limits),
        &["1395", "1000"],
    );
    assert!(decode_image(&bytes("png_3x3.png"), &limits).is_ok());
}

#[test]
fn byte_cap_is_enforced() {
    let limits = DecodeLimits {
        max_bytes: 100,
        ..Default::default()
    };
    error_of(
        decode_image(&bytes("png_rgb.png"), &limits),
        &["bytes", "100"],
    );
    error_of(decode_image_file(&file("png_rgb.png"), &limits), &["bytes"]);
}

#[test]
fn missing_file_names_the_path() {
    error_of(
        decode_image_file(&file("does_not_exist.png"), &DecodeLimits::default()),
        &["does_not_exist.png"],
    );
}

#[test]
fn one_pixel_image_without_splitting_is_upscaled_to_378() {
    let img = decode(&bytes("png_1x1.png")).unwrap();
    let out = idefics2_8b().preprocess(&[vec![img]], Some(false)).unwrap();
    assert_eq!(out.pixel_values_shape, [1, 1, 3, 378, 378]);
}

#[test]
fn one_pixel_image_with_splitting_is_a_clear_error() {
    let img = decode(&bytes("png_1x1.png")).unwrap();
    let e = idefics2_8b()
        .preprocess(&[vec![img]], Some(true))
        .unwrap_err();
    assert!(
        matches!(
            e,
            ImageError::TooSmallToSplit {
                width: 1,
                height: 1
            }
        ),
        "{e}"
    );
    let img = RgbImage::new(50, 1, vec![7; 150]).unwrap();
    assert!(idefics2_8b().preprocess(&[vec![img]], Some(true)).is_err());
}

#[test]
fn two_and_three_pixel_images_split_fine() {
    for name in ["png_2x2.png", "png_3x3.png"] {
        let img = decode(&bytes(name)).unwrap();
        let out = idefics2_8b().preprocess(&[vec![img]], Some(true)).unwrap();
        assert_eq!(out.pixel_values_shape, [1, 5, 3, 378, 378], "{name}");
        assert_eq!(out.frame_sizes[0], vec![(378, 378); 5]);
    }
}

#[test]
fn image_smaller_than_a_patch() {
    let img = RgbImage::new(10, 10, vec![128; 300]).unwrap();
    let out = idefics2_8b().preprocess(&[vec![img]], None).unwrap();
    assert_eq!(out.pixel_values_shape, [1, 5, 3, 378, 378]);
    assert!(out.pixel_attention_mask.iter().all(|&v| v == 1));
}

#[test]
fn extreme_aspect_ratios() {
    let wide = decode(&bytes("png_plain_200x8000.png")).unwrap();
    let tall = decode(&bytes("png_plain_6000x200.png")).unwrap();
    let out = idefics2_8b().preprocess(&[vec![wide, tall]], None).unwrap();
    assert_eq!(out.frames_per_sample, vec![10]);
    // 200 x 8000 -> 980 x 24 by the rule, then the short side is raised to 378.
    assert_eq!(out.frame_sizes[0][4], (378, 980));
    assert_eq!(out.frame_sizes[0][9], (980, 378));
}

#[test]
fn zero_sized_rgb_buffer_is_refused() {
    assert!(RgbImage::new(3, 3, vec![0; 26]).is_err());
    let empty = RgbImage::new(0, 5, vec![]).unwrap();
    let e = idefics2_8b().preprocess(&[vec![empty]], None).unwrap_err();
    assert!(matches!(e, ImageError::ZeroSize { .. }), "{e}");
}

#[test]
fn samples_without_images_are_all_zero() {
    let img = RgbImage::new(20, 10, vec![255; 600]).unwrap();
    let out = idefics2_8b()
        .preprocess(&[vec![img], vec![]], Some(false))
        .unwrap();
    assert_eq!(out.pixel_values_shape, [2, 1, 3, 378, 378]);
    let half = out.pixel_attention_mask.len() / 2;
    assert!(out.pixel_attention_mask[..half].iter().all(|&v| v == 1));
    assert!(out.pixel_attention_mask[half..].iter().all(|&v| v == 0));
    assert!(out.pixel_values[out.pixel_values.len() / 2..]
        .iter()
        .all(|&v| v == 0.0));
}

#[test]
fn bad_config_files_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let e = Idefics2ImageProcessorConfig::from_model_dir(dir.path()).unwrap_err();
    assert!(e.to_string().contains("preprocessor_config.json"), "{e}");
    std::fs::write(
        dir.path().join("preprocessor_config.json"),
        r#"{"size": {"longest_edge": 980}}"#,
    )
    .unwrap();
    let e = Idefics2ImageProcessorConfig::from_model_dir(dir.path()).unwrap_err();
    assert!(e.to_string().contains("size"), "{e}");
    std::fs::write(dir.path().join("preprocessor_config.json"), "{not json").unwrap();
    let e = Idefics2ImageProcessorConfig::from_model_dir(dir.path()).unwrap_err();
    assert!(e.to_string().contains("preprocessor_config.json"), "{e}");
}

#[test]
fn model_dir_with_only_processor_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("processor_config.json"),
        r#"{"image_seq_len": 64, "processor_class": "Idefics2Processor",
            "image_processor": {"image_processor_type": "Idefics2ImageProcessorPil", "do_image_splitting": true,
                                "size": {"shortest_edge": 378, "longest_edge": 980}, "resample": 2}}"#,
    )
    .unwrap();
    let cfg = Idefics2ImageProcessorConfig::from_model_dir(dir.path()).unwrap();
    assert!(cfg.do_image_splitting);
    assert_eq!(
        idefics_processor::image::read_image_seq_len(dir.path()).unwrap(),
        Some(64)
    );
    std::fs::write(
        dir.path().join("processor_config.json"),
        r#"{"image_seq_len": -3}"#,
    )
    .unwrap();
    assert!(idefics_processor::image::read_image_seq_len(dir.path()).is_err());
}

#[test]
fn phone_photo_4000x3000_is_downscaled() {
    let (w, h) = (4000, 3000);
    let data: Vec<u8> = (0..w * h * 3).map(|i| (i % 251) as u8).collect();
    let img = RgbImage::new(w, h, data).unwrap();
    let start = std::time::Instant::now();
    let out = idefics2_8b().preprocess(&[vec![img]], None).unwrap();
    eprintln!("4000x3000 with splitting: {:?}", start.elapsed());
    // Crops 2000x1500 -> 980x735; full image 4000x3000 -> 980x735.
    assert_eq!(out.pixel_values_shape, [1, 5, 3, 735, 980]);
    assert_eq!(out.frame_sizes[0], vec![(735, 980); 5]);
}
