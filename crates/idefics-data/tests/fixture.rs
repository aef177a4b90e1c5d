//! The committed sample dataset (tests/fixtures/data) is exactly what the generator writes for its settings.
//! Regenerate it (and the contact sheet docs/synth-examples.png) after a deliberate generator change with
//! `IDEFICS_REGEN_FIXTURES=1 cargo test -p idefics-data --test fixture`.

use std::path::{Path, PathBuf};

use idefics_data::synth::{self, contact_sheet, generate_example, Family, Fonts, SynthConfig};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The fixture's settings (also written in tests/fixtures/data/README.md).
fn fixture_config(out: &Path) -> SynthConfig {
    SynthConfig {
        out: out.to_path_buf(),
        n: 2,
        heldout: 1,
        seed: 0,
        families: Family::ALL.to_vec(),
        rows_per_group: 2,
        questions_per_image: synth::DEFAULT_QUESTIONS_PER_IMAGE,
    }
}

fn data_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in ["train", "heldout"] {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join(sub))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        out.extend(
            v.into_iter()
                .map(|p| p.strip_prefix(dir).unwrap().to_path_buf()),
        );
    }
    out.push(PathBuf::from("metadata.json"));
    out
}

#[test]
fn committed_fixture_matches_generator() {
    let tmp = tempfile::tempdir().unwrap();
    synth::generate(&fixture_config(tmp.path())).unwrap();
    let fixture = repo().join("tests/fixtures/data");
    let regen = std::env::var_os("IDEFICS_REGEN_FIXTURES").is_some();
    let mut total = 0;
    for rel in data_files(tmp.path()) {
        let fresh = std::fs::read(tmp.path().join(&rel)).unwrap();
        total += fresh.len();
        if regen {
            let dst = fixture.join(&rel);
            std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
            std::fs::write(dst, &fresh).unwrap();
        } else {
            let committed = std::fs::read(fixture.join(&rel)).unwrap_or_default();
            assert!(
                committed == fresh,
                "tests/fixtures/data/{} differs from the generator's output; if the change is deliberate, bump \
                 GENERATOR_VERSION and run IDEFICS_REGEN_FIXTURES=1 cargo test -p idefics-data --test fixture",
                rel.display()
            );
        }
    }
    assert!(
        total < 300_000,
        "fixture is {total} bytes, keep it under 300 KB"
    );
    if regen {
        let fonts = Fonts::load().unwrap();
        let examples: Vec<_> = Family::ALL
            .into_iter()
            .flat_map(|f| (0..4).map(move |i| (f, i)))
            .map(|(f, i)| generate_example(f, 0, i, &fonts))
            .collect();
        let sheet = contact_sheet(&examples, 8, 256, &fonts);
        sheet.save(repo().join("docs/synth-examples.png")).unwrap();
    }
}
