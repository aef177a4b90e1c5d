//! The synthetic generator: determinism, answers consistent with what was drawn, and readable output.

use std::path::{Path, PathBuf};

use idefics_data::synth::{self, generate_example, Family, Fonts, SynthConfig};
use idefics_data::{CauldronReader, ObelicsReader, PairReader, ReaderOptions};
use serde_json::Value;

fn config(out: &Path, n: usize, heldout: usize, seed: u64) -> SynthConfig {
    SynthConfig {
        out: out.to_path_buf(),
        n,
        heldout,
        seed,
        families: Family::ALL.to_vec(),
        rows_per_group: 4,
        questions_per_image: synth::DEFAULT_QUESTIONS_PER_IMAGE,
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn same_seed_gives_identical_files() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    synth::generate(&config(a.path(), 3, 2, 42)).unwrap();
    synth::generate(&config(b.path(), 3, 2, 42)).unwrap();
    synth::generate(&config(c.path(), 3, 2, 43)).unwrap();
    let fa = files_under(a.path());
    assert_eq!(fa.len(), 15, "{fa:?}"); // 2 splits x (5 chat + pairs + interleaved) + metadata.json
    for f in &fa {
        let rel = f.strip_prefix(a.path()).unwrap();
        let x = std::fs::read(f).unwrap();
        assert_eq!(
            x,
            std::fs::read(b.path().join(rel)).unwrap(),
            "{} differs between runs",
            rel.display()
        );
        if rel.extension().is_some_and(|e| e == "parquet") {
            assert_ne!(
                x,
                std::fs::read(c.path().join(rel)).unwrap(),
                "{} ignores the seed",
                rel.display()
            );
        }
    }
}

#[test]
fn output_reads_back_and_matches_examples() {
    let dir = tempfile::tempdir().unwrap();
    let meta = synth::generate(&config(dir.path(), 5, 2, 9)).unwrap();
    let fonts = Fonts::load().unwrap();
    for family in Family::ALL {
        let path = dir
            .path()
            .join(format!("train/chat_{}.parquet", family.name()));
        let rows: Vec<_> = CauldronReader::open(&[path], ReaderOptions::default())
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(rows.len(), 5);
        for (i, row) in rows.iter().enumerate() {
            let ex = generate_example(family, 9, i as u64, &fonts);
            let img = row.images[0].decode().unwrap().to_rgb8();
            assert_eq!(
                img, ex.image,
                "{family:?} {i}: stored PNG decodes to the drawn image"
            );
            let answers: Vec<&str> = row.turns.iter().map(|t| t.assistant.as_str()).collect();
            let expected: Vec<&str> = ex.qas.iter().map(|q| q.answer.as_str()).collect();
            assert_eq!(answers, expected);
            assert!(row
                .turns
                .iter()
                .all(|t| t.source == format!("synth_{}", family.name())));
        }
        let stats = &meta.splits["train"].families[family.name()];
        assert_eq!(stats.examples, 5);
        assert!(stats.chance_uniform > 0.0 && stats.chance_uniform < 1.0);
    }
    let pairs: Vec<_> = PairReader::open(
        &[dir.path().join("train/pairs.parquet")],
        ReaderOptions::default(),
    )
    .unwrap()
    .map(|r| r.unwrap())
    .collect();
    assert_eq!(pairs.len(), 25);
    let docs: Vec<_> = ObelicsReader::open(
        &[dir.path().join("heldout/interleaved.parquet")],
        ReaderOptions::default(),
    )
    .unwrap()
    .map(|r| r.unwrap())
    .collect();
    assert!(!docs.is_empty());
    assert!(docs.iter().all(|d| d.images().count() >= 2));
    let md: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("metadata.json")).unwrap()).unwrap();
    assert_eq!(md["generator_version"], synth::GENERATOR_VERSION);
    assert_ne!(
        md["splits"]["train"]["seed"],
        md["splits"]["heldout"]["seed"]
    );
}

/// The answer vocabulary stays small: a word, a number, a colour, yes/no or a letter.
fn assert_short(answer: &str) {
    assert!(
        !answer.is_empty() && !answer.contains(' ') && answer.len() <= 10,
        "answer {answer:?}"
    );
}

fn find<'a>(question: &str, options: impl IntoIterator<Item = &'a str>) -> &'a str {
    options
        .into_iter()
        .find(|o| question.contains(&format!(" {o}")))
        .unwrap_or_else(|| panic!("{question}"))
}

#[test]
fn shapes_answers_match_the_drawn_objects() {
    let fonts = Fonts::load().unwrap();
    let mut sizes = std::collections::BTreeSet::new();
    let mut counts = std::collections::BTreeSet::new();
    for i in 0..60 {
        let ex = generate_example(Family::Shapes, 5, i, &fonts);
        sizes.insert(ex.image.dimensions());
        let objs = ex.record["objects"].as_array().unwrap();
        counts.insert(objs.len());
        let colour_of = |o: &Value| o["colour"].as_str().unwrap().to_string();
        let shape_of = |o: &Value| o["shape"].as_str().unwrap().to_string();
        for qa in &ex.qas {
            assert_short(&qa.answer);
            let q = &qa.question;
            match qa.kind.as_str() {
                "count_total" => assert_eq!(qa.answer, objs.len().to_string()),
                "count_colour" => {
                    let c = find(q, synth::COLOURS.iter().map(|c| c.0));
                    assert_eq!(
                        qa.answer,
                        objs.iter()
                            .filter(|o| colour_of(o) == c)
                            .count()
                            .to_string(),
                        "{q}"
                    );
                }
                "count_shape" => {
                    let s = find(q, synth::shapes::SHAPES);
                    assert_eq!(
                        qa.answer,
                        objs.iter().filter(|o| shape_of(o) == s).count().to_string(),
                        "{q}"
                    );
                }
                "colour" => {
                    let s = find(q, synth::shapes::SHAPES);
                    let o = objs.iter().find(|o| shape_of(o) == s).unwrap();
                    assert_eq!(qa.answer, colour_of(o));
                }
                "exists" => {
                    let c = find(q, synth::COLOURS.iter().map(|c| c.0));
                    let s = find(q, synth::shapes::SHAPES);
                    let present = objs.iter().any(|o| colour_of(o) == c && shape_of(o) == s);
                    assert_eq!(qa.answer, if present { "yes" } else { "no" });
                }
                k if k.ends_with("_mc") => {
                    assert!(["A", "B", "C", "D"].contains(&qa.answer.as_str()));
                    let line = q
                        .lines()
                        .find(|l| l.starts_with(&format!("{}. ", qa.answer)))
                        .unwrap();
                    let picked = &line[3..];
                    let truth = if k == "colour_mc" {
                        let s = find(q.lines().next().unwrap(), synth::shapes::SHAPES);
                        colour_of(objs.iter().find(|o| shape_of(o) == s).unwrap())
                    } else {
                        let c = find(
                            q.lines().next().unwrap(),
                            synth::COLOURS.iter().map(|c| c.0),
                        );
                        shape_of(objs.iter().find(|o| colour_of(o) == c).unwrap())
                    };
                    assert_eq!(picked, truth, "{q}");
                }
                _ => assert!(
                    ["yes", "no"].contains(&qa.answer.as_str())
                        || synth::shapes::SHAPES.contains(&qa.answer.as_str())
                ),
            }
        }
    }
    assert!(sizes.len() > 30, "varied sizes: {}", sizes.len());
    assert!(
        counts.contains(&1) && counts.contains(&9),
        "counts 1..9: {counts:?}"
    );
}

/// Single-object scenes: the answers name what was drawn, and the pixels show it.
#[test]
fn basics_answers_match_the_drawn_image() {
    let fonts = Fonts::load().unwrap();
    let rgb = |name: &str| synth::COLOURS.iter().find(|c| c.0 == name).unwrap().1;
    let (mut fills, mut shapes) = (0, 0);
    let mut answers = std::collections::BTreeSet::new();
    for i in 0..60 {
        let ex = generate_example(Family::Basics, 2, i, &fonts);
        let (w, h) = ex.image.dimensions();
        assert!(w.max(h) >= 112 && w.max(h) <= 448, "{w}x{h}");
        for qa in &ex.qas {
            assert_short(&qa.answer);
            answers.insert(qa.answer.clone());
        }
        if let Some(fill) = ex.record["fill"].as_str() {
            fills += 1;
            assert_eq!(ex.qas.len(), 1);
            assert_eq!(ex.qas[0].question, "What colour is the image?");
            assert_eq!(ex.qas[0].answer, fill);
            assert!(ex.image.pixels().all(|p| p.0 == rgb(fill)));
            continue;
        }
        shapes += 1;
        let o = &ex.record["objects"][0];
        let (colour, shape) = (o["colour"].as_str().unwrap(), o["shape"].as_str().unwrap());
        for qa in &ex.qas {
            match qa.kind.as_str() {
                "single_shape" => assert_eq!(qa.answer, shape),
                "single_colour" => assert_eq!(qa.answer, colour),
                k => panic!("unexpected kind {k}"),
            }
        }
        // The shape's centre has its colour, and it covers a large part of the canvas.
        let (x, y) = (
            o["x"].as_f64().unwrap() as u32,
            o["y"].as_f64().unwrap() as u32,
        );
        assert_eq!(ex.image.get_pixel(x, y).0, rgb(colour));
        let covered = ex.image.pixels().filter(|p| p.0 == rgb(colour)).count();
        assert!(covered * 20 > (w * h) as usize, "{covered} of {w}x{h}");
    }
    assert!(fills > 15 && shapes > 15, "{fills} fills, {shapes} shapes");
    assert!(answers.len() >= 10, "answers vary: {answers:?}");
}

#[test]
fn ocr_docs_and_charts_answers_match_their_records() {
    let fonts = Fonts::load().unwrap();
    for i in 0..40 {
        let ex = generate_example(Family::Ocr, 1, i, &fonts);
        let items = ex.record["items"].as_array().unwrap();
        for qa in &ex.qas {
            assert_short(&qa.answer);
            match qa.kind.as_str() {
                "count" => assert_eq!(qa.answer, items.len().to_string()),
                "read_colour" => {
                    let c = find(&qa.question, synth::TEXT_COLOURS.iter().map(|c| c.0));
                    let item = items.iter().find(|it| it["colour"] == c).unwrap();
                    assert_eq!(qa.answer, item["text"].as_str().unwrap());
                }
                "colour" => {
                    let item = items
                        .iter()
                        .find(|it| {
                            qa.question
                                .contains(&format!("\"{}\"", it["text"].as_str().unwrap()))
                        })
                        .unwrap();
                    assert_eq!(qa.answer, item["colour"].as_str().unwrap());
                }
                _ => {}
            }
        }

        let ex = generate_example(Family::Docs, 1, i, &fonts);
        let r = &ex.record;
        for qa in &ex.qas {
            assert_short(&qa.answer);
            match qa.kind.as_str() {
                "total" => {
                    let cents: i64 = r["items"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|it| {
                            it["price"]
                                .as_str()
                                .unwrap()
                                .replace('.', "")
                                .parse::<i64>()
                                .unwrap()
                        })
                        .sum();
                    assert_eq!(qa.answer, format!("{}.{:02}", cents / 100, cents % 100));
                    assert_eq!(qa.answer, r["total"].as_str().unwrap());
                }
                "count_items" => {
                    assert_eq!(qa.answer, r["items"].as_array().unwrap().len().to_string())
                }
                "count_rows" => {
                    assert_eq!(qa.answer, r["names"].as_array().unwrap().len().to_string())
                }
                "age" => assert_eq!(qa.answer, r["age"].to_string()),
                "city" => assert_eq!(qa.answer, r["city"].as_str().unwrap()),
                "argmax" => {
                    let names = r["names"].as_array().unwrap();
                    let cols: Vec<String> = r["columns"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|c| c.as_str().unwrap().to_lowercase())
                        .collect();
                    let k = cols
                        .iter()
                        .position(|c| qa.question.contains(c.as_str()))
                        .unwrap();
                    let vals: Vec<i64> = r["values"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|row| row[k].as_i64().unwrap())
                        .collect();
                    let best = (0..vals.len()).max_by_key(|&j| vals[j]).unwrap();
                    assert_eq!(qa.answer, names[best].as_str().unwrap());
                }
                _ => {}
            }
        }

        let ex = generate_example(Family::Charts, 1, i, &fonts);
        let r = &ex.record;
        let values: Vec<i64> = r["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        for qa in &ex.qas {
            assert_short(&qa.answer);
            match qa.kind.as_str() {
                "count_bars" => assert_eq!(qa.answer, values.len().to_string()),
                "max" => {
                    let j = (0..values.len()).max_by_key(|&j| values[j]).unwrap();
                    assert_eq!(qa.answer, r["labels"][j].as_str().unwrap());
                }
                "value" if r["type"] == "bar" => {
                    let j = r["labels"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .position(|l| qa.question.contains(l.as_str().unwrap()))
                        .unwrap();
                    assert_eq!(qa.answer, values[j].to_string());
                }
                "max_year" => {
                    let j = (0..values.len()).max_by_key(|&j| values[j]).unwrap();
                    assert_eq!(qa.answer, r["years"][j].to_string());
                }
                _ => {}
            }
        }
    }
}

/// Throughput figure for the report: `cargo test -p idefics-data --test synth -- --ignored --nocapture`.
#[test]
#[ignore]
fn generation_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let start = std::time::Instant::now();
    let mut cfg = config(dir.path(), 100, 10, 1);
    cfg.rows_per_group = 64;
    synth::generate(&cfg).unwrap();
    let secs = start.elapsed().as_secs_f64();
    let bytes: u64 = files_under(dir.path())
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    println!(
        "550 examples (5 families x 110) in {secs:.2} s = {:.0} images/s, {:.1} MB on disk",
        550.0 / secs,
        bytes as f64 / 1e6
    );
}

#[test]
fn more_questions_per_image_only_add_turns() {
    let fonts = Fonts::load().unwrap();
    let mut added = 0;
    for family in Family::ALL {
        for i in 0..6 {
            let base = generate_example(family, 3, i, &fonts);
            let more = synth::generate_example_with_questions(family, 3, i, &fonts, 9);
            assert_eq!(base.image, more.image, "{family:?} {i}: image changed");
            assert_eq!(base.caption, more.caption);
            assert!(base.qas.len() <= synth::DEFAULT_QUESTIONS_PER_IMAGE);
            assert_eq!(base.qas[..], more.qas[..base.qas.len()], "{family:?} {i}");
            let mut kinds: Vec<&str> = more.qas.iter().map(|q| q.kind.as_str()).collect();
            kinds.sort_unstable();
            kinds.dedup();
            assert_eq!(kinds.len(), more.qas.len(), "{family:?} {i}: repeated kind");
            added += more.qas.len() - base.qas.len();
        }
    }
    assert!(added > 30, "only {added} questions added");

    // The training split gets the extra questions, the held-out split keeps the default.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 4, 4, 5);
    cfg.questions_per_image = 9;
    let meta = synth::generate(&cfg).unwrap();
    let (train, heldout) = (&meta.splits["train"], &meta.splits["heldout"]);
    let shapes = |s: &synth::SplitMetadata| s.families["shapes"].questions;
    assert!(shapes(train) > 4 * 3, "{}", shapes(train));
    assert!(shapes(heldout) <= 4 * 3, "{}", shapes(heldout));
    assert_eq!(meta.questions_per_image["train"], 9);
    assert_eq!(meta.questions_per_image["heldout"], 3);

    cfg.questions_per_image = 0;
    let err = synth::generate(&cfg).unwrap_err().to_string();
    assert!(err.contains("at least 1"), "{err}");
}
