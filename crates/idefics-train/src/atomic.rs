//! Crash-safe file writes: write a temp file in the same directory, fsync, rename over the target,
//! fsync the directory. A reader sees either the old or the new file, never a torn one.

use super::TrainError;
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` atomically (same-directory temp file + fsync + rename).
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| TrainError::Invalid(format!("{}: not a file path", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| TrainError::io(path, e))
}

/// fsync a directory so a rename inside it is durable (a no-op where directories cannot be opened).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}
