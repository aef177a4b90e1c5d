//! Arrow column access that tolerates the layouts real files use: `Utf8` / `LargeUtf8` / `Utf8View` strings,
//! `Binary` / `LargeBinary` / `BinaryView` bytes, `List` / `LargeList` lists, and images stored as a HF
//! `Image` struct `{bytes, path}`, raw bytes, or a path / URL string.

use std::path::Path;

use arrow_array::{
    Array, ArrayRef, BinaryArray, BinaryViewArray, LargeBinaryArray, LargeListArray,
    LargeStringArray, ListArray, RecordBatch, StringArray, StringViewArray, StructArray,
};

use crate::sample::ImageSource;

/// A path relative to the image root; URLs (OBELICS stores image URLs) and absolute paths are kept as they are.
pub(crate) fn resolve(root: &Path, p: &str) -> ImageSource {
    if p.contains("://") {
        ImageSource::Path(p.into())
    } else {
        ImageSource::Path(root.join(p))
    }
}

/// A column of a batch, or a message naming what is missing.
pub(crate) fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, String> {
    batch.column_by_name(name).ok_or_else(|| {
        let have: Vec<&str> = batch
            .schema_ref()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        format!("missing (columns present: {})", have.join(", "))
    })
}

/// The string at `i` (`None` when null). Errors when the column is not a string type.
pub(crate) fn string_at(arr: &dyn Array, i: usize) -> Result<Option<String>, String> {
    if arr.is_null(i) {
        return Ok(None);
    }
    let any = arr.as_any();
    if let Some(a) = any.downcast_ref::<StringArray>() {
        Ok(Some(a.value(i).to_string()))
    } else if let Some(a) = any.downcast_ref::<LargeStringArray>() {
        Ok(Some(a.value(i).to_string()))
    } else if let Some(a) = any.downcast_ref::<StringViewArray>() {
        Ok(Some(a.value(i).to_string()))
    } else {
        Err(format!("expected a string, found {}", arr.data_type()))
    }
}

/// The bytes at `i` (`None` when null), or `Err` when the column is not binary.
fn binary_at(arr: &dyn Array, i: usize) -> Option<Result<Option<Vec<u8>>, String>> {
    let any = arr.as_any();
    let value = if let Some(a) = any.downcast_ref::<BinaryArray>() {
        a.value(i).to_vec()
    } else if let Some(a) = any.downcast_ref::<LargeBinaryArray>() {
        a.value(i).to_vec()
    } else if let Some(a) = any.downcast_ref::<BinaryViewArray>() {
        a.value(i).to_vec()
    } else {
        return None;
    };
    Some(Ok((!arr.is_null(i)).then_some(value)))
}

/// The list at `i` as an array (`None` when null).
pub(crate) fn list_at(arr: &dyn Array, i: usize) -> Result<Option<ArrayRef>, String> {
    if arr.is_null(i) {
        return Ok(None);
    }
    let any = arr.as_any();
    if let Some(a) = any.downcast_ref::<ListArray>() {
        Ok(Some(a.value(i)))
    } else if let Some(a) = any.downcast_ref::<LargeListArray>() {
        Ok(Some(a.value(i)))
    } else {
        Err(format!("expected a list, found {}", arr.data_type()))
    }
}

/// A field of a struct column.
pub(crate) fn struct_field<'a>(arr: &'a dyn Array, name: &str) -> Result<&'a ArrayRef, String> {
    let s = arr
        .as_any()
        .downcast_ref::<StructArray>()
        .ok_or_else(|| format!("expected a struct, found {}", arr.data_type()))?;
    s.column_by_name(name)
        .ok_or_else(|| format!("struct has no field `{name}`"))
}

/// The image at `i`: HF `Image` struct (`bytes` preferred, else `path`), raw bytes, or a path string
/// resolved against `root`. `None` when the entry is null (or a struct with both fields null).
pub(crate) fn image_at(
    arr: &dyn Array,
    i: usize,
    root: &Path,
) -> Result<Option<ImageSource>, String> {
    if arr.is_null(i) {
        return Ok(None);
    }
    if arr.as_any().is::<StructArray>() {
        if let Ok(bytes) = struct_field(arr, "bytes") {
            match binary_at(bytes.as_ref(), i) {
                Some(Ok(Some(b))) => return Ok(Some(ImageSource::Bytes(b))),
                Some(Ok(None)) => {}
                Some(Err(e)) => return Err(e),
                None => {
                    return Err(format!(
                        "image field `bytes` is {}, expected binary",
                        bytes.data_type()
                    ))
                }
            }
        }
        if let Ok(path) = struct_field(arr, "path") {
            if let Some(p) = string_at(path.as_ref(), i)? {
                return Ok(Some(resolve(root, &p)));
            }
        }
        return Ok(None);
    }
    if let Some(bytes) = binary_at(arr, i) {
        return bytes.map(|b| b.map(ImageSource::Bytes));
    }
    match string_at(arr, i) {
        Ok(p) => Ok(p.map(|p| resolve(root, &p))),
        Err(_) => Err(format!(
            "expected an image (struct<bytes, path>, binary or string), found {}",
            arr.data_type()
        )),
    }
}
