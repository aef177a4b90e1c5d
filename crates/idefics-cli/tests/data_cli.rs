//! `idefics data inspect --export`: the images of the shown samples are written as stored, with their turns.

mod common;

use common::idefics;

#[test]
fn inspect_exports_images_and_turns() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("synth");
    let o = idefics(&[
        "data",
        "synth",
        "--out",
        data.to_str().unwrap(),
        "--n",
        "3",
        "--seed",
        "5",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let export = dir.path().join("export");
    let file = data.join("train/chat_shapes.parquet");
    let o = idefics(&[
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
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let listing = std::fs::read_to_string(export.join("samples.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = listing
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
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
