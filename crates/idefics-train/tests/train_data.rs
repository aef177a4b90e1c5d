//! The training data side: label masking, image splitting, packing, skipping, mixture determinism and resumption.
//! Uses the tiny chat checkpoint's tokenizer / template / processor (tests/fixtures/e2e/tiny-chat: image_seq_len 6,
//! images resized to 24..64 px) and the synthetic dataset fixture (tests/fixtures/data).

use std::path::{Path, PathBuf};

use candle_core::Device;
use idefics_data::{
    write_parquet, CauldronReader, ChatSample, ImageSource, PairReader, ReaderOptions, Turn,
};
use idefics_train::collate::{CollateConfig, Collator, Segment, TrainExample, UpscaleConfig};
use idefics_train::data::{MixtureState, MixtureStream, SourceKind, SourceSpec};
use idefics_train::loss::IGNORE_INDEX;
use idefics_train::packing::{PackLimits, PairPacker};
use idefics_train::rng::TrainRng;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn model_dir() -> PathBuf {
    root().join("e2e/tiny-chat")
}

fn data(file: &str) -> PathBuf {
    root().join("data/train").join(file)
}

fn collator(cfg: CollateConfig) -> Collator {
    Collator::from_model_dir(&model_dir(), cfg).expect("collator")
}

fn cfg(split_fraction: f64) -> CollateConfig {
    CollateConfig {
        max_seq_len: 512,
        split_fraction,
        upscale: None,
        max_num_images: 4,
    }
}

/// Encoded bytes of a real image from the synthetic fixture.
fn fixture_image() -> ImageSource {
    let mut r = CauldronReader::open(&[data("chat_shapes.parquet")], ReaderOptions::default())
        .expect("open");
    let s = r.next().expect("a row").expect("valid row");
    s.images.into_iter().next().expect("an image")
}

fn turn(user: &str, assistant: &str) -> Turn {
    Turn {
        user: user.into(),
        assistant: assistant.into(),
        source: "test".into(),
    }
}

/// Maximal runs of labelled positions, as (start, end).
fn label_runs(ex: &TrainExample) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut start = None;
    for (i, &l) in ex.labels.iter().chain([&IGNORE_INDEX]).enumerate() {
        match (l != IGNORE_INDEX, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                runs.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    runs
}

/// Equal example lists; on failure names the first differing index instead of printing every token.
fn assert_same(got: &[TrainExample], want: &[TrainExample], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!(
            "{what}: example {i} differs ({} vs {} tokens, {} vs {} images)",
            got[i].input_ids.len(),
            want[i].input_ids.len(),
            got[i].n_images,
            want[i].n_images
        );
    }
}

fn decode(c: &Collator, ids: &[u32]) -> String {
    c.tokenizer().decode(ids, false).expect("decode")
}

#[test]
fn chat_labels_are_the_answers_and_their_end_of_utterance() {
    let c = collator(cfg(0.0));
    let sample = ChatSample {
        images: vec![fixture_image()],
        turns: vec![
            turn("What colour is the square?", "red"),
            turn("How many shapes?", "three shapes"),
        ],
    };
    let ex = c
        .encode_chat(&sample, false, &mut TrainRng::seed_from_u64(1))
        .expect("usable");
    assert_eq!(ex.labels.len(), ex.input_ids.len());
    // Labels equal the tokens where set.
    for (&id, &l) in ex.input_ids.iter().zip(&ex.labels) {
        assert!(l == IGNORE_INDEX || l == i64::from(id));
    }
    let runs = label_runs(&ex);
    assert_eq!(runs.len(), 2, "one labelled run per answer: {runs:?}");
    let answers: Vec<String> = runs
        .iter()
        .map(|&(s, e)| decode(&c, &ex.input_ids[s..e]).trim().to_string())
        .collect();
    assert_eq!(
        answers,
        ["red<end_of_utterance>", "three shapes<end_of_utterance>"]
    );
    // Nothing of the user turns, the image or the prompt is labelled.
    let special = c.tokenizer().special_ids();
    for (i, &id) in ex.input_ids.iter().enumerate() {
        if id == special.image || id == special.fake_image || Some(id) == special.bos {
            assert_eq!(ex.labels[i], IGNORE_INDEX, "token {id} at {i} is labelled");
        }
    }
    let unlabelled: Vec<u32> = ex
        .input_ids
        .iter()
        .zip(&ex.labels)
        .filter(|(_, &l)| l == IGNORE_INDEX)
        .map(|(&id, _)| id)
        .collect();
    let text = decode(&c, &unlabelled);
    assert!(text.contains("What colour is the square?") && text.contains("How many shapes?"));
    assert!(!text.contains("red") && !text.contains("three"), "{text}");
    // The image block: 6 image tokens between two fake tokens, no splitting.
    assert_eq!(
        ex.input_ids.iter().filter(|&&t| t == special.image).count(),
        6
    );
    assert_eq!((ex.frames.len(), ex.n_images, ex.split), (1, 1, false));

    // The tokens before the first answer are exactly the inference prompt of the first turn.
    let prompts = idefics_processor::PromptProcessor::from_dir(&model_dir()).expect("prompts");
    let msgs = vec![idefics_processor::ChatMessage::parts(
        "user",
        vec![
            idefics_processor::ContentPart::Image {},
            idefics_processor::ContentPart::Text {
                text: "What colour is the square?".into(),
            },
        ],
    )];
    let prompt = prompts
        .encode_chat(&msgs, true, 1, Some(false))
        .expect("prompt");
    assert_eq!(&ex.input_ids[..runs[0].0], prompt.input_ids.as_slice());
}

#[test]
fn text_only_chat_and_padding_in_a_batch() {
    let c = collator(cfg(0.0));
    let mut rng = TrainRng::seed_from_u64(2);
    let with_image = c
        .encode_chat(
            &ChatSample {
                images: vec![fixture_image()],
                turns: vec![turn("Describe.", "A red square on a white background")],
            },
            false,
            &mut rng,
        )
        .expect("usable");
    let text = c
        .encode_chat(
            &ChatSample {
                images: vec![],
                turns: vec![turn("Hi", "Hello"), turn("2+2?", "4"), turn("Bye", "Bye")],
            },
            false,
            &mut rng,
        )
        .expect("usable");
    assert!(text.frames.is_empty() && text.n_images == 0);
    assert_eq!(label_runs(&text).len(), 3);
    let special = c.tokenizer().special_ids();
    assert!(!text.input_ids.contains(&special.image));

    let batch = c
        .collate(&[with_image.clone(), text.clone()], &Device::Cpu)
        .expect("collate");
    let ids = batch
        .inputs
        .input_ids
        .as_ref()
        .unwrap()
        .to_vec2::<u32>()
        .unwrap();
    let mask = batch
        .inputs
        .attention_mask
        .as_ref()
        .unwrap()
        .to_vec2::<u32>()
        .unwrap();
    let labels = batch.labels.to_vec2::<i64>().unwrap();
    let width = with_image.input_ids.len().max(text.input_ids.len());
    assert_eq!(ids[0].len(), width);
    for (row, ex) in [&with_image, &text].iter().enumerate() {
        let n = ex.input_ids.len();
        assert_eq!(&ids[row][..n], ex.input_ids.as_slice());
        assert_eq!(&labels[row][..n], ex.labels.as_slice());
        assert!(mask[row][..n].iter().all(|&m| m == 1));
        assert!(mask[row][n..].iter().all(|&m| m == 0));
        assert!(labels[row][n..].iter().all(|&l| l == IGNORE_INDEX));
    }
    assert!(width > text.input_ids.len().min(with_image.input_ids.len()));
    assert_eq!(
        batch.n_label_tokens,
        with_image.n_label_tokens() + text.n_label_tokens()
    );
    // Pixel tensors: [B, max frames, 3, H, W]; the text-only row is all padding.
    let pv = batch.inputs.pixel_values.as_ref().expect("pixels");
    let pm = batch.inputs.pixel_attention_mask.as_ref().expect("mask");
    let (b, m, ch, h, w) = pv.dims5().unwrap();
    assert_eq!((b, m, ch), (2, 1, 3));
    assert_eq!(pm.dims(), [2, 1, h, w]);
    let pm = pm.to_dtype(candle_core::DType::F32).unwrap();
    let row_sum = |r: usize| {
        pm.get(r)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert!(row_sum(0) > 0.0);
    assert_eq!(row_sum(1), 0.0);
    let zero = pv.get(1).unwrap().abs().unwrap().sum_all().unwrap();
    assert_eq!(zero.to_scalar::<f32>().unwrap(), 0.0);
}

#[test]
fn split_fraction_sets_the_image_tokens_per_image() {
    let sample = ChatSample {
        images: vec![fixture_image(), fixture_image()],
        turns: vec![turn("Compare.", "same")],
    };
    let image = |ex: &TrainExample, c: &Collator| {
        let id = c.tokenizer().special_ids().image;
        ex.input_ids.iter().filter(|&&t| t == id).count()
    };
    let never = collator(cfg(0.0));
    let always = collator(cfg(1.0));
    for seed in 0..4 {
        let a = never
            .encode_chat(&sample, false, &mut TrainRng::seed_from_u64(seed))
            .unwrap();
        let b = always
            .encode_chat(&sample, false, &mut TrainRng::seed_from_u64(seed))
            .unwrap();
        assert_eq!((image(&a, &never), a.frames.len(), a.split), (12, 2, false));
        assert_eq!(
            (image(&b, &always), b.frames.len(), b.split),
            (60, 10, true)
        );
    }
    // 50%: both outcomes happen over a few samples.
    let half = collator(cfg(0.5));
    let splits: Vec<bool> = (0..32)
        .map(|s| {
            half.encode_chat(&sample, false, &mut TrainRng::seed_from_u64(s))
                .unwrap()
                .split
        })
        .collect();
    assert!(splits.contains(&true) && splits.contains(&false));
}

#[test]
fn upscaling_enlarges_images_when_drawn() {
    let canvas = idefics_data::synth::Canvas::new(30, 26, [200, 30, 30]);
    let small = ImageSource::Bytes(idefics_data::synth::png_bytes(&canvas.img).unwrap());
    let sample = ChatSample {
        images: vec![small],
        turns: vec![turn("Colour?", "red")],
    };
    let frame_size = |up: Option<UpscaleConfig>, seed: u64| {
        let c = collator(CollateConfig {
            upscale: up,
            ..cfg(0.0)
        });
        let ex = c
            .encode_chat(&sample, false, &mut TrainRng::seed_from_u64(seed))
            .unwrap();
        (ex.frames[0].height(), ex.frames[0].width())
    };
    let off = Some(UpscaleConfig {
        probability: 0.0,
        max_factor: 2.0,
    });
    let on = Some(UpscaleConfig {
        probability: 1.0,
        max_factor: 2.0,
    });
    let mut grown = 0;
    for seed in 0..6 {
        assert_eq!(frame_size(None, seed), (26, 30));
        assert_eq!(frame_size(off.clone(), seed), (26, 30));
        let (h, w) = frame_size(on.clone(), seed);
        assert!((26..=52).contains(&h) && (30..=60).contains(&w), "{h}x{w}");
        grown += usize::from(h > 26 && w > 30);
    }
    assert!(grown >= 4, "only {grown} of 6 images were enlarged");
}

fn seg(ids: usize, images: usize, label: i64) -> Segment {
    let mut s = Segment::default();
    for i in 0..ids {
        s.push(10 + i as u32, i >= images);
    }
    s.n_images = images;
    if label < 0 {
        s.labels.iter_mut().for_each(|l| *l = IGNORE_INDEX);
    }
    s
}

#[test]
fn pair_packer_never_splits_a_pair() {
    let limits = PackLimits {
        max_seq_len: 20,
        max_num_images: 2,
        bos: Some(1),
        fake_image: Some(3),
    };
    let mut packer = PairPacker::new(limits);
    let mut rows = Vec::new();
    let sizes = [8, 7, 5, 9, 21, 3, 3, 3, 6];
    let mut skipped = 0;
    for &n in &sizes {
        match packer.push(seg(n, 1, 1)) {
            Ok(Some(row)) => rows.push(row),
            Ok(None) => {}
            Err(_) => skipped += 1,
        }
    }
    rows.extend(packer.flush());
    assert_eq!(skipped, 1, "the 21-token pair cannot fit in a 20-token row");
    // Rows: [8,7] (5 would be a third image), [5,9], [3,3] (image cap), [3,6].
    let lens: Vec<usize> = rows.iter().map(|r| r.input_ids.len()).collect();
    assert_eq!(lens, [16, 15, 7, 10]);
    for r in &rows {
        assert!(r.input_ids.len() <= 20 && r.n_images <= 2);
        assert_eq!(r.input_ids[0], 1);
        assert_eq!(r.labels[0], IGNORE_INDEX);
    }
}

#[test]
fn packed_pairs_hold_whole_captions_within_limits() {
    let mut caps = Vec::new();
    for p in PairReader::open(&[data("pairs.parquet")], ReaderOptions::default()).unwrap() {
        caps.push(p.unwrap().text);
    }
    let mut config = cfg(0.5);
    config.max_seq_len = 160;
    config.max_num_images = 2;
    let c = collator(config);
    let special = c.tokenizer().special_ids();
    let spec = SourceSpec {
        name: None,
        kind: SourceKind::Pairs,
        paths: vec![data("pairs.parquet")],
        weight: 1.0,
        text_only: false,
        image_root: None,
    };
    let mut stream = MixtureStream::new(&[spec], c, 7).unwrap();
    let mut multi = 0;
    for _ in 0..6 {
        let ex = stream.next_example().unwrap();
        assert!(ex.input_ids.len() <= 160 && ex.n_images <= 2 && ex.n_images >= 1);
        assert_eq!(ex.frames.len(), ex.n_images, "no splitting in pre-training");
        let images = ex.input_ids.iter().filter(|&&t| t == special.image).count();
        assert_eq!(images, 6 * ex.n_images);
        let c = stream.collator();
        let runs = label_runs(&ex);
        assert_eq!(runs.len(), ex.n_images, "one caption per pair");
        for (s, e) in runs {
            let text = decode(c, &ex.input_ids[s..e]);
            let caption = text
                .trim()
                .strip_suffix("</s>")
                .expect("ends with EOS")
                .trim();
            assert!(
                caps.iter().any(|c| c == caption),
                "{caption:?} is not a whole caption"
            );
        }
        multi += usize::from(ex.n_images > 1);
    }
    assert!(multi > 0, "some rows hold two pairs");
}

#[test]
fn document_windows_keep_images_whole() {
    let mut config = cfg(0.0);
    config.max_seq_len = 40;
    config.max_num_images = 1;
    let c = collator(config);
    let special = c.tokenizer().special_ids();
    let spec = SourceSpec {
        name: Some("obelics".into()),
        kind: SourceKind::Documents,
        paths: vec![data("interleaved.parquet")],
        weight: 1.0,
        text_only: false,
        image_root: None,
    };
    let mut stream = MixtureStream::new(&[spec], c, 3).unwrap();
    let mut with_image = 0;
    for _ in 0..12 {
        let ex = stream.next_example().unwrap();
        assert!(ex.input_ids.len() <= 40, "{}", ex.input_ids.len());
        assert!(ex.n_images <= 1);
        assert_eq!(ex.frames.len(), ex.n_images);
        let ids = &ex.input_ids;
        let n_img = ids.iter().filter(|&&t| t == special.image).count();
        assert_eq!(n_img, 6 * ex.n_images);
        if let Some(start) = ids.iter().position(|&t| t == special.image) {
            // <fake> <image>x6 <fake>, whole.
            assert_eq!(ids[start - 1], special.fake_image);
            assert!(ids[start..start + 6].iter().all(|&t| t == special.image));
            assert_eq!(ids.get(start + 6), Some(&special.fake_image));
            with_image += 1;
        }
        for (&id, &l) in ids.iter().zip(&ex.labels) {
            if id == special.image || id == special.fake_image || Some(id) == special.bos {
                assert_eq!(l, IGNORE_INDEX);
            }
        }
        assert!(ex.n_label_tokens() > 0);
    }
    assert!(with_image > 0);

    // text_only: no image token anywhere.
    let spec = SourceSpec {
        name: None,
        kind: SourceKind::Documents,
        paths: vec![data("interleaved.parquet")],
        weight: 1.0,
        text_only: true,
        image_root: None,
    };
    let mut stream = MixtureStream::new(&[spec], collator(cfg(0.0)), 3).unwrap();
    for _ in 0..4 {
        let ex = stream.next_example().unwrap();
        assert!(ex.frames.is_empty() && !ex.input_ids.contains(&special.image));
    }
}

fn write_chat(dir: &Path, rows: &[ChatSample]) -> PathBuf {
    let path = dir.join("chat.parquet");
    write_parquet(&path, rows, 2).unwrap();
    path
}

#[test]
fn undecodable_images_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let good = |a: &str| ChatSample {
        images: vec![fixture_image()],
        turns: vec![turn("Colour?", a)],
    };
    let broken = ChatSample {
        images: vec![ImageSource::Bytes(b"definitely not an image".to_vec())],
        turns: vec![turn("Colour?", "BROKEN")],
    };
    let path = write_chat(dir.path(), &[good("red"), broken.clone(), good("blue")]);
    let spec = SourceSpec {
        name: Some("mine".into()),
        kind: SourceKind::Cauldron,
        paths: vec![path],
        weight: 1.0,
        text_only: false,
        image_root: None,
    };
    let mut stream = MixtureStream::new(&[spec], collator(cfg(0.0)), 0).unwrap();
    for _ in 0..6 {
        let ex = stream.next_example().unwrap();
        assert_eq!(ex.n_images, 1);
        assert_eq!(ex.frames.len(), 1);
        let text = decode(stream.collator(), &ex.input_ids);
        assert!(!text.contains("BROKEN"), "a broken sample was used: {text}");
    }
    // 6 examples over 2 epochs of 3 rows (2 good each): the broken row was met at least twice.
    let skips = stream.skips();
    assert!(skips.undecodable_image >= 2, "{skips:?}");
    assert_eq!(skips.total_skipped(), skips.undecodable_image);

    // A source with nothing usable is an error naming it.
    let path = write_chat(dir.path(), &[broken.clone(), broken]);
    let spec = SourceSpec {
        name: Some("all-broken".into()),
        kind: SourceKind::Cauldron,
        paths: vec![path],
        weight: 1.0,
        text_only: false,
        image_root: None,
    };
    let mut stream = MixtureStream::new(&[spec], collator(cfg(0.0)), 0).unwrap();
    let err = stream.next_example().unwrap_err().to_string();
    assert!(
        err.contains("all-broken") && err.contains("usable"),
        "{err}"
    );
}

#[test]
fn over_long_samples_are_skipped_not_truncated() {
    let mut config = cfg(0.0);
    config.max_seq_len = 30; // one image block alone is 8 tokens; a long answer does not fit
    let c = collator(config);
    let long = ChatSample {
        images: vec![fixture_image()],
        turns: vec![turn("Read it.", &"word ".repeat(40))],
    };
    let skip = c
        .encode_chat(&long, false, &mut TrainRng::seed_from_u64(0))
        .unwrap_err();
    assert_eq!(skip.reason, idefics_train::collate::SkipReason::TooLong);
    let many = ChatSample {
        images: vec![fixture_image(); 5],
        turns: vec![turn("?", "x")],
    };
    let skip = collator(cfg(0.0))
        .encode_chat(&many, false, &mut TrainRng::seed_from_u64(0))
        .unwrap_err();
    assert_eq!(
        skip.reason,
        idefics_train::collate::SkipReason::TooManyImages
    );
}

fn mixture_specs() -> Vec<SourceSpec> {
    vec![
        SourceSpec {
            name: Some("chat".into()),
            kind: SourceKind::Cauldron,
            paths: vec![data("chat_shapes.parquet"), data("chat_ocr.parquet")],
            weight: 2.0,
            text_only: false,
            image_root: None,
        },
        SourceSpec {
            name: Some("pairs".into()),
            kind: SourceKind::Pairs,
            paths: vec![data("pairs.parquet")],
            weight: 1.0,
            text_only: false,
            image_root: None,
        },
        SourceSpec {
            name: Some("docs".into()),
            kind: SourceKind::Documents,
            paths: vec![data("interleaved.parquet")],
            weight: 1.0,
            text_only: false,
            image_root: None,
        },
    ]
}

fn mixture_cfg() -> CollateConfig {
    CollateConfig {
        max_seq_len: 400,
        split_fraction: 0.5,
        upscale: Some(Default::default()),
        // Documents (2-4 images) then give several windows: resuming inside one is exercised.
        max_num_images: 1,
    }
}

fn stream(seed: u64) -> MixtureStream {
    MixtureStream::new(&mixture_specs(), collator(mixture_cfg()), seed).unwrap()
}

#[test]
fn mixture_is_deterministic_from_its_seed() {
    let a = stream(11).next_examples(10).unwrap();
    let b = stream(11).next_examples(10).unwrap();
    assert_same(&a, &b, "same seed");
    let c = stream(12).next_examples(10).unwrap();
    assert_ne!(a, c);
    // Both chat rows (with <end_of_utterance>) and pre-training rows (without) are drawn.
    let eou = stream(11)
        .collator()
        .tokenizer()
        .special_ids()
        .end_of_utterance;
    let chat = a.iter().filter(|e| e.input_ids.contains(&eou)).count();
    assert!(
        chat > 0 && chat < a.len(),
        "{chat} chat rows of {}",
        a.len()
    );
}

#[test]
fn resumed_stream_continues_exactly() {
    let total = 16;
    let reference = stream(5).next_examples(total).unwrap();
    let mut inside_document = false;
    for k in [1, 3, 5, 7, 9, 11, 13] {
        let mut first = stream(5);
        let head = first.next_examples(k).unwrap();
        assert_same(&head, &reference[..k], "head");
        inside_document |= first.state().sources[2].emitted > 0;
        let saved = serde_json::to_string(&first.state()).unwrap();
        let state: MixtureState = serde_json::from_str(&saved).unwrap();
        let mut resumed = stream(5);
        resumed.restore(&state).unwrap();
        let tail = resumed.next_examples(total - k).unwrap();
        assert_eq!(
            tail.as_slice(),
            &reference[k..],
            "resumed after {k} examples"
        );
    }
    assert!(
        inside_document,
        "no checkpoint had taken windows of a document"
    );
    // Documents alone, one image per window: every document gives 2+ windows, so a checkpoint after the first
    // example falls between two windows of the same document.
    let docs_only = || {
        let specs = vec![mixture_specs().remove(2)];
        MixtureStream::new(&specs, collator(mixture_cfg()), 9).unwrap()
    };
    let reference = docs_only().next_examples(6).unwrap();
    assert!(reference[0].n_images == 1 && reference[1].n_images == 1);
    let mut first = docs_only();
    first.next_example().unwrap();
    let mut resumed = docs_only();
    resumed.restore(&first.state()).unwrap();
    assert_eq!(
        resumed.next_examples(5).unwrap().as_slice(),
        &reference[1..]
    );
    // A state from another seed is refused.
    let other = stream(6).state();
    assert!(stream(5).restore(&other).is_err());
}

#[test]
fn sources_are_drawn_by_weight() {
    let spec = |name: &str, file: &str, weight: f64| SourceSpec {
        name: Some(name.into()),
        kind: SourceKind::Cauldron,
        paths: vec![data(file)],
        weight,
        text_only: true,
        image_root: None,
    };
    let specs = [
        spec("heavy", "chat_shapes.parquet", 3.0),
        spec("light", "chat_ocr.parquet", 1.0),
    ];
    let mut stream = MixtureStream::new(&specs, collator(cfg(0.0)), 4).unwrap();
    stream.next_examples(200).unwrap();
    let counts = stream.examples_per_source();
    let (heavy, light) = (counts[0].1 as f64, counts[1].1 as f64);
    assert_eq!(heavy + light, 200.0);
    // Binomial(200, 0.75): mean 150, sd 6.1; the bounds are 4 sd away.
    assert!((125.0..=175.0).contains(&heavy), "{counts:?}");
    assert_eq!(
        stream.state().examples_per_source,
        [heavy as u64, light as u64]
    );
}

#[test]
fn jsonl_conversations_without_images_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.jsonl");
    let lines = [
        r#"{"texts": [{"user": "Say hi", "assistant": "hi", "source": "t"}]}"#,
        r#"{"images": [], "texts": [{"user": "1+1?", "assistant": "2"}, {"user": "2+2?", "assistant": "4"}]}"#,
    ];
    std::fs::write(&path, lines.join("\n")).unwrap();
    let spec = SourceSpec {
        name: None,
        kind: SourceKind::Cauldron,
        paths: vec![path],
        weight: 1.0,
        text_only: false,
        image_root: None,
    };
    let mut stream = MixtureStream::new(&[spec], collator(cfg(0.5)), 1).unwrap();
    let batch = stream.next_batch(4, &Device::Cpu).unwrap();
    assert!(batch.inputs.pixel_values.is_none());
    let mut answers: Vec<Vec<String>> = Vec::new();
    for row in batch.labels.to_vec2::<i64>().unwrap() {
        let ex = TrainExample {
            input_ids: row.iter().map(|&l| l.max(0) as u32).collect(),
            labels: row,
            frames: vec![],
            n_images: 0,
            split: false,
        };
        let runs = label_runs(&ex);
        answers.push(
            runs.iter()
                .map(|&(s, e)| {
                    decode(stream.collator(), &ex.input_ids[s..e])
                        .trim()
                        .to_string()
                })
                .collect(),
        );
    }
    answers.sort();
    let want = |a: &[&str]| {
        a.iter()
            .map(|s| format!("{s}<end_of_utterance>"))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        answers,
        [
            want(&["2", "4"]),
            want(&["2", "4"]),
            want(&["hi"]),
            want(&["hi"])
        ]
    );
    assert_eq!(stream.skips().total_skipped(), 0);
}

#[test]
fn pixel_tensors_pad_to_the_most_frames_and_largest_frame() {
    let c = collator(cfg(0.0));
    let mut rng = TrainRng::seed_from_u64(0);
    let two = c
        .encode_chat(
            &ChatSample {
                images: vec![fixture_image(), fixture_image()],
                turns: vec![turn("Same?", "yes")],
            },
            false,
            &mut rng,
        )
        .unwrap();
    let canvas = idefics_data::synth::Canvas::new(30, 26, [0, 0, 255]);
    let one = c
        .encode_chat(
            &ChatSample {
                images: vec![ImageSource::Bytes(
                    idefics_data::synth::png_bytes(&canvas.img).unwrap(),
                )],
                turns: vec![turn("Colour?", "blue")],
            },
            false,
            &mut rng,
        )
        .unwrap();
    let batch = c.collate(&[two.clone(), one], &Device::Cpu).unwrap();
    let (b, m, _, h, w) = batch.inputs.pixel_values.as_ref().unwrap().dims5().unwrap();
    let hmax = two.frames.iter().map(|f| f.height()).max().unwrap().max(26);
    let wmax = two.frames.iter().map(|f| f.width()).max().unwrap().max(30);
    assert_eq!((b, m, h, w), (2, 2, hmax, wmax));
    let mask = batch
        .inputs
        .pixel_attention_mask
        .as_ref()
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap();
    let valid = |r: usize, f: usize| {
        mask.get(r)
            .unwrap()
            .get(f)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as usize
    };
    assert_eq!(valid(1, 0), 26 * 30, "the small image's valid area");
    assert_eq!(valid(1, 1), 0, "the missing second frame is padding");
    assert_eq!(valid(0, 1), two.frames[1].height() * two.frames[1].width());
}

#[test]
fn recipe_tables_deserialize_with_defaults() {
    let c: CollateConfig = serde_json::from_str(r#"{"max_seq_len": 1024}"#).unwrap();
    assert_eq!(c.max_seq_len, 1024);
    assert_eq!(c.split_fraction, 0.5);
    assert!(c.upscale.is_none());
    let s: SourceSpec =
        serde_json::from_str(r#"{"kind": "documents", "paths": ["a/b"], "text_only": true}"#)
            .unwrap();
    assert_eq!(s.kind, SourceKind::Documents);
    assert_eq!(s.weight, 1.0);
    assert!(serde_json::from_str::<CollateConfig>(r#"{"max_seq_lenn": 3}"#).is_err());
    let bad = CollateConfig {
        split_fraction: 1.5,
        ..CollateConfig::default()
    };
    assert!(bad.validate().is_err());
}
