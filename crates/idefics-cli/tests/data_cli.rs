//! `idefics data inspect --export`: the images of the shown samples are written as stored, with their turns.

mod common;

use common::{idefics_ok, json_lines};

#[test]
fn inspect_exports_images_and_turns() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("synth");
    idefics_ok(&[
        "data",
        "synth",
        "--out",
        data.to_str().unwrap(),
        "--n",
        "3",
        "--seed",
        "5",
    ]);
    let export = dir.path().join("export");
    let file = data.join("train/chat_shapes.parquet");
    idefics_ok(&[
        "data",
        "inspect",
        "--layout",
        "chat",
        file.to_str().unwrap(),
        "--show",
        "2",
        "--export",
        export.to_str().unwrap(),
    ]);
    let rows = json_lines(&export.join("samples.jsonl"));
    assert_eq!(rows.len(), 2, "only the shown samples are exported");
    for row in &rows {
        let name = row["images"][0].as_str().unwrap();
        let bytes = std::fs::read(export.join(name)).unwrap();
        assert!(
            bytes.starts_with(b"\x89PNG"),
            "{name} is not the stored PNG"
        );
        assert!(!row["texts"][0]["assistant"].as_str().unwrap().is_empty());
    }
}
