//! Readers: round trips through the writers, JSONL, OBELICS validation, bad images, shuffle order and cursors.

use std::io::Write;
use std::path::{Path, PathBuf};

use idefics_data::{
    write_parquet, CauldronReader, ChatSample, Cursor, DataError, DocItem, ImageSource,
    ImageTextPair, InterleavedDocument, ObelicsReader, PairReader, ReaderOptions, Turn,
};

fn png(w: u32, h: u32, shade: u8) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb([shade, 0, 255 - shade]));
    idefics_data::synth::png_bytes(&img).expect("encode")
}

fn chat(i: usize) -> ChatSample {
    ChatSample {
        images: (0..i % 3)
            .map(|k| ImageSource::Bytes(png(4 + k as u32, 3, i as u8)))
            .collect(),
        turns: vec![
            Turn {
                user: format!("q{i}"),
                assistant: format!("a{i}"),
                source: "test".into(),
            },
            Turn {
                user: format!("q{i}b"),
                assistant: format!("a{i}b"),
                source: String::new(),
            },
        ],
    }
}

fn ids(samples: &[ChatSample]) -> Vec<String> {
    samples
        .iter()
        .map(|s| s.turns[0].assistant.clone())
        .collect()
}

fn read_all<I: Iterator<Item = idefics_data::Result<T>>, T>(it: I) -> Vec<T> {
    it.map(|r| r.expect("row decodes")).collect()
}

/// 3 files x 5 row groups of 7 rows + 1 partial group (105 rows in all).
fn chat_dataset(dir: &Path) -> (Vec<PathBuf>, Vec<ChatSample>) {
    let mut all = Vec::new();
    let mut paths = Vec::new();
    for f in 0..3 {
        let rows: Vec<ChatSample> = (0..35).map(|i| chat(f * 35 + i)).collect();
        let path = dir.join(format!("part{f}.parquet"));
        write_parquet(&path, &rows, 8).expect("write");
        all.extend(rows);
        paths.push(path);
    }
    (paths, all)
}

#[test]
fn cauldron_parquet_round_trip_in_file_order() {
    let dir = tempfile::tempdir().unwrap();
    let (_, all) = chat_dataset(dir.path());
    let reader =
        CauldronReader::open(&[dir.path().to_path_buf()], ReaderOptions::default()).unwrap();
    assert_eq!(reader.num_rows(), 105);
    assert_eq!(reader.num_units(), 15);
    assert_eq!(read_all(reader), all);
}

#[test]
fn pairs_and_obelics_parquet_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let pairs: Vec<ImageTextPair> = (0..9)
        .map(|i| ImageTextPair {
            image: ImageSource::Bytes(png(5, 5, i)),
            text: format!("caption {i}"),
        })
        .collect();
    let p = dir.path().join("pairs.parquet");
    write_parquet(&p, &pairs, 4).unwrap();
    assert_eq!(
        read_all(PairReader::open(&[p], ReaderOptions::default()).unwrap()),
        pairs
    );

    let docs: Vec<InterleavedDocument> = (0..5)
        .map(|i| InterleavedDocument {
            items: vec![
                DocItem::Text(format!("intro {i}")),
                DocItem::Image(ImageSource::Bytes(png(3, 3, i))),
                DocItem::Image(ImageSource::Path(PathBuf::from("rel/x.png"))),
                DocItem::Text("end".into()),
            ],
        })
        .collect();
    let p = dir.path().join("docs.parquet");
    write_parquet(&p, &docs, 2).unwrap();
    let back = read_all(ObelicsReader::open(&[p], ReaderOptions::default()).unwrap());
    assert_eq!(back.len(), 5);
    assert_eq!(back[1].items[0], docs[1].items[0]);
    assert_eq!(back[1].items[1], docs[1].items[1]);
    // Relative paths are resolved against the data file's folder.
    assert_eq!(
        back[1].items[2],
        DocItem::Image(ImageSource::Path(dir.path().join("rel/x.png")))
    );
}

#[test]
fn jsonl_readers_resolve_image_folder() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("imgs")).unwrap();
    std::fs::write(dir.path().join("imgs/a.png"), png(6, 4, 9)).unwrap();
    let path = dir.path().join("chat.jsonl");
    let mut f = std::fs::File::create(&path).unwrap();
    writeln!(f, r#"{{"images": ["a.png"], "texts": [{{"user": "What?", "assistant": "red", "source": "x"}}]}}"#).unwrap();
    writeln!(f).unwrap();
    writeln!(
        f,
        r#"{{"images": [], "texts": [{{"user": "Hi", "assistant": "yes"}}]}}"#
    )
    .unwrap();
    writeln!(f, r#"{{"images": [1], "texts": []}}"#).unwrap();
    drop(f);
    let opts = ReaderOptions {
        image_root: Some(dir.path().join("imgs")),
        ..Default::default()
    };
    let rows: Vec<_> = CauldronReader::open(std::slice::from_ref(&path), opts)
        .unwrap()
        .collect();
    assert_eq!(rows.len(), 3);
    let first = rows[0].as_ref().unwrap();
    assert_eq!(
        first.images,
        vec![ImageSource::Path(dir.path().join("imgs/a.png"))]
    );
    assert_eq!(first.images[0].decode().unwrap().width(), 6);
    assert_eq!(rows[1].as_ref().unwrap().turns[0].source, "");
    let err = rows[2].as_ref().unwrap_err().to_string();
    assert!(
        err.contains("row 2") && err.contains("line 4") && err.contains("images[0]"),
        "{err}"
    );

    let pairs = dir.path().join("pairs.jsonl");
    std::fs::write(
        &pairs,
        "{\"image\": \"imgs/a.png\", \"text\": \"a small image\"}\n{\"text\": \"no image\"}\n",
    )
    .unwrap();
    let rows: Vec<_> = PairReader::open(&[pairs], ReaderOptions::default())
        .unwrap()
        .collect();
    assert_eq!(rows[0].as_ref().unwrap().text, "a small image");
    assert!(rows[1]
        .as_ref()
        .unwrap_err()
        .to_string()
        .contains("`image` is missing"));
}

#[test]
fn obelics_rows_violating_exactly_one_null_are_rejected_with_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("obelics.jsonl");
    std::fs::write(
        &path,
        concat!(
            "{\"images\": [\"u1.jpg\", null, \"https://x.org/u2.jpg\"], \"texts\": [null, \"hello\", null]}\n",
            "{\"images\": [\"u1.jpg\", null], \"texts\": [\"both\", \"x\"]}\n",
            "{\"images\": [null, null], \"texts\": [\"x\", null]}\n",
            "{\"images\": [null], \"texts\": [\"x\", \"y\"]}\n",
        ),
    )
    .unwrap();
    let rows: Vec<_> = ObelicsReader::open(&[path], ReaderOptions::default())
        .unwrap()
        .collect();
    let doc = rows[0].as_ref().unwrap();
    assert_eq!(doc.items.len(), 3);
    assert_eq!(doc.items[1], DocItem::Text("hello".into()));
    assert_eq!(doc.images().count(), 2);
    // URLs are kept as they are (OBELICS images must be downloaded first; decoding reports the URL).
    assert_eq!(
        doc.items[2],
        DocItem::Image(ImageSource::Path(PathBuf::from("https://x.org/u2.jpg")))
    );
    let msg = |i: usize| rows[i].as_ref().unwrap_err().to_string();
    assert!(
        msg(1).contains("row 1") && msg(1).contains("position 0: both"),
        "{}",
        msg(1)
    );
    assert!(
        msg(2).contains("row 2")
            && msg(2).contains("position 1: both `images` and `texts` are null"),
        "{}",
        msg(2)
    );
    assert!(
        msg(3).contains("row 3") && msg(3).contains("has 1 entries but `texts` has 2"),
        "{}",
        msg(3)
    );
    assert!(matches!(rows[1], Err(DataError::InvalidRow { row: 1, .. })));
}

#[test]
fn undecodable_image_bytes_are_reported() {
    let bad = ImageSource::Bytes(b"definitely not a png".to_vec());
    let err = bad.decode().unwrap_err();
    assert!(matches!(err, DataError::ImageDecode { .. }));
    assert!(err.to_string().contains("<20 bytes>"), "{err}");
    let missing = ImageSource::Path(PathBuf::from("/nonexistent/x.png"));
    assert!(missing
        .decode()
        .unwrap_err()
        .to_string()
        .contains("/nonexistent/x.png"));
    assert_eq!(
        ImageSource::Bytes(png(7, 2, 1)).decode().unwrap().height(),
        2
    );
}

#[test]
fn missing_column_is_a_schema_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("pairs.parquet");
    let pairs = vec![ImageTextPair {
        image: ImageSource::Bytes(png(2, 2, 0)),
        text: "t".into(),
    }];
    write_parquet(&p, &pairs, 4).unwrap();
    let rows: Vec<_> = CauldronReader::open(&[p], ReaderOptions::default())
        .unwrap()
        .collect();
    let err = rows[0].as_ref().unwrap_err().to_string();
    assert!(
        err.contains("column `images`") && err.contains("missing"),
        "{err}"
    );
}

fn shuffled(seed: u64, window: usize) -> ReaderOptions {
    ReaderOptions {
        shuffle_seed: Some(seed),
        window,
        ..Default::default()
    }
}

#[test]
fn shuffle_is_a_deterministic_permutation() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, all) = chat_dataset(dir.path());
    let a = ids(&read_all(
        CauldronReader::open(&paths, shuffled(7, 3)).unwrap(),
    ));
    let b = ids(&read_all(
        CauldronReader::open(&paths, shuffled(7, 3)).unwrap(),
    ));
    let c = ids(&read_all(
        CauldronReader::open(&paths, shuffled(8, 3)).unwrap(),
    ));
    assert_eq!(a, b, "same seed, same order");
    assert_ne!(a, c, "different seed, different order");
    assert_ne!(a, ids(&all), "shuffled differs from file order");
    let mut sorted = a.clone();
    sorted.sort();
    let mut expected = ids(&all);
    expected.sort();
    assert_eq!(sorted, expected, "every row exactly once");
}

#[test]
fn cursor_resumes_the_same_sequence_across_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, _) = chat_dataset(dir.path());
    let opts = ReaderOptions {
        repeat: true,
        ..shuffled(3, 2)
    };
    let full: Vec<String> = CauldronReader::open(&paths, opts.clone())
        .unwrap()
        .take(260)
        .map(|r| r.unwrap().turns[0].assistant.clone())
        .collect();
    assert_ne!(
        full[..105],
        full[105..210],
        "the second epoch has a new order"
    );
    // Save at several points (window boundaries, mid-window, second epoch) and resume in a fresh reader.
    for stop in [0, 1, 13, 14, 50, 104, 105, 106, 200] {
        let mut reader = CauldronReader::open(&paths, opts.clone()).unwrap();
        for _ in 0..stop {
            reader.next().unwrap().unwrap();
        }
        let saved = serde_json::to_string(&reader.cursor()).unwrap();
        let cursor: Cursor = serde_json::from_str(&saved).unwrap();
        let mut resumed = CauldronReader::open(&paths, opts.clone()).unwrap();
        resumed.seek(&cursor).unwrap();
        let rest: Vec<String> = resumed
            .take(260 - stop)
            .map(|r| r.unwrap().turns[0].assistant.clone())
            .collect();
        assert_eq!(
            rest,
            full[stop..],
            "resumed after {stop} samples (cursor {saved})"
        );
    }
    // A cursor from a different shuffle or dataset is refused.
    let mut other = CauldronReader::open(&paths, shuffled(4, 2)).unwrap();
    let cursor = CauldronReader::open(&paths, opts).unwrap().cursor();
    assert!(matches!(other.seek(&cursor), Err(DataError::Cursor(_))));
    let mut small = CauldronReader::open(&paths[..1], shuffled(3, 2)).unwrap();
    assert!(small
        .seek(&cursor)
        .unwrap_err()
        .to_string()
        .contains("units"));
}

#[test]
fn jsonl_blocks_shuffle_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.jsonl");
    let mut f = std::fs::File::create(&path).unwrap();
    for i in 0..50 {
        writeln!(f, r#"{{"texts": [{{"user": "q", "assistant": "{i}"}}]}}"#).unwrap();
    }
    drop(f);
    let opts = ReaderOptions {
        jsonl_block_rows: 6,
        ..shuffled(11, 2)
    };
    let reader = CauldronReader::open(std::slice::from_ref(&path), opts.clone()).unwrap();
    assert_eq!((reader.num_rows(), reader.num_units()), (50, 9));
    let full = ids(&read_all(reader));
    let mut sorted: Vec<usize> = full.iter().map(|s| s.parse().unwrap()).collect();
    sorted.sort();
    assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    let mut r = CauldronReader::open(std::slice::from_ref(&path), opts.clone()).unwrap();
    for _ in 0..17 {
        r.next();
    }
    let mut resumed = CauldronReader::open(&[path], opts).unwrap();
    resumed.seek(&r.cursor()).unwrap();
    assert_eq!(ids(&read_all(resumed)), full[17..]);
}
