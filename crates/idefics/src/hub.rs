//! Hugging Face Hub model resolution: a model id (e.g. `HuggingFaceM4/idefics2-8b`) -> a local directory with the
//! files the model needs, in the standard Hugging Face cache so that Python tools share it.
//!
//! Cache layout (huggingface_hub `file_download.py`): `<cache>/models--org--name/` with `blobs/<etag>` (file
//! contents, named by the Hub's etag: the sha256 for LFS files, the git blob sha1 otherwise), `snapshots/<commit>/
//! <file>` (relative symlinks into blobs), `refs/<revision>` (commit hash of a branch / tag), and `.no_exist/<commit>/
//! <file>` (files known to be absent). Environment: `HF_HUB_CACHE` / `HF_HOME`, `HF_ENDPOINT`, `HF_TOKEN`,
//! `HF_HUB_OFFLINE`.
//!
//! Downloads are resumable: bytes go to `blobs/<etag>.incomplete`, a later attempt asks for the rest with a `Range`
//! request. Size (`X-Linked-Size` / `Content-Length`) and, for LFS files, sha256 (`X-Linked-Etag`) are checked before
//! a blob is published. Progress is reported through a callback; drawing it is the caller's business.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

mod client;
mod error;

use client::{Client, FileMeta, Head};
use error::io_err;
pub use error::HubError;

/// Files every model needs.
pub const REQUIRED_FILES: &[&str] = &["config.json", "tokenizer.json"];
/// Files used when present (a 404 is fine).
pub const OPTIONAL_FILES: &[&str] = &[
    "tokenizer_config.json",
    "processor_config.json",
    "preprocessor_config.json",
    "chat_template.json",
    "chat_template.jinja",
    "generation_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
];
const WEIGHTS_FILE: &str = "model.safetensors";
const WEIGHTS_INDEX: &str = "model.safetensors.index.json";
const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// Report progress at most every this many bytes (plus start and end).
const PROGRESS_STEP: u64 = 1 << 20;

/// Where and how to reach the Hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    /// Base URL (`HF_ENDPOINT`, default https://huggingface.co), without a trailing slash.
    pub endpoint: String,
    /// Hub cache root (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`).
    pub cache_dir: PathBuf,
    /// Bearer token (`HF_TOKEN`).
    pub token: Option<String>,
    /// Cache only (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
}

impl HubConfig {
    /// Read the standard Hugging Face environment variables.
    pub fn from_env() -> Self {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// Same as [`Self::from_env`] with an explicit variable lookup (for tests and embedding).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Self {
        let non_empty = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let cache_dir = if let Some(c) =
            non_empty("HF_HUB_CACHE").or_else(|| non_empty("HUGGINGFACE_HUB_CACHE"))
        {
            PathBuf::from(c)
        } else if let Some(h) = non_empty("HF_HOME") {
            PathBuf::from(h).join("hub")
        } else if let Some(x) = non_empty("XDG_CACHE_HOME") {
            PathBuf::from(x).join("huggingface").join("hub")
        } else {
            PathBuf::from(non_empty("HOME").unwrap_or_else(|| ".".into()))
                .join(".cache")
                .join("huggingface")
                .join("hub")
        };
        let endpoint = non_empty("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let offline = non_empty("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(
                v.trim().to_ascii_uppercase().as_str(),
                "1" | "ON" | "YES" | "TRUE"
            )
        });
        Self {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            cache_dir,
            token: non_empty("HF_TOKEN"),
            offline,
        }
    }
}

/// One progress report for one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownloadProgress<'a> {
    /// File name in the repository.
    pub file: &'a str,
    /// Bytes present so far (including bytes resumed from an earlier attempt).
    pub downloaded: u64,
    /// Total size if known.
    pub total: Option<u64>,
    /// The file is complete (downloaded or already cached).
    pub done: bool,
}

/// A resolved model directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    /// Directory holding the files (a cache snapshot, or the local directory given).
    pub dir: PathBuf,
    /// Commit hash of the snapshot (None for a local directory).
    pub commit: Option<String>,
    /// Files present in `dir` among those a model uses (weights included), in download order.
    pub files: Vec<String>,
}

/// Resolve `model` (a local directory, or a Hub id with an optional revision, default "main") to a directory
/// with config, weights, tokenizer and processor files, downloading what is missing unless offline.
pub fn resolve_model(
    model: &str,
    revision: Option<&str>,
    config: &HubConfig,
    progress: &mut dyn FnMut(DownloadProgress),
) -> Result<ModelFiles, HubError> {
    let local = Path::new(model);
    if local.is_dir() {
        let files = all_model_files(local)?
            .into_iter()
            .filter(|f| local.join(f).is_file())
            .collect();
        return Ok(ModelFiles {
            dir: local.to_path_buf(),
            commit: None,
            files,
        });
    }
    validate_model_id(model)?;
    let repo = RepoCache::new(config, model, revision.unwrap_or("main"));
    if config.offline {
        return repo.resolve_offline();
    }
    let client = Client::new(config);
    // The first file pins the commit; every later file is asked for at that commit, so a push during the
    // download cannot mix two versions.
    let (config_path, commit) =
        match repo.download(&client, &repo.revision, "config.json", progress)? {
            Downloaded::Present(path, commit) => (path, commit),
            Downloaded::Absent(url) => return Err(repo.not_found("config.json", url)),
        };
    repo.write_ref(&commit)?;
    let mut files = vec!["config.json".to_string()];
    debug_assert!(config_path.is_file());

    let mut fetch =
        |name: &str, required: bool, files: &mut Vec<String>| -> Result<bool, HubError> {
            match repo.download(&client, &commit, name, progress)? {
                Downloaded::Present(..) => {
                    files.push(name.to_string());
                    Ok(true)
                }
                Downloaded::Absent(url) if required => Err(repo.not_found(name, url)),
                Downloaded::Absent(_) => {
                    repo.mark_absent(&commit, name);
                    Ok(false)
                }
            }
        };
    if fetch(WEIGHTS_INDEX, false, &mut files)? {
        for shard in shard_names(&repo.snapshot_dir(&commit).join(WEIGHTS_INDEX))? {
            fetch(&shard, true, &mut files)?;
        }
    } else {
        fetch(WEIGHTS_FILE, true, &mut files)?;
    }
    for name in REQUIRED_FILES.iter().filter(|f| **f != "config.json") {
        fetch(name, true, &mut files)?;
    }
    for name in OPTIONAL_FILES {
        fetch(name, false, &mut files)?;
    }
    Ok(ModelFiles {
        dir: repo.snapshot_dir(&commit),
        commit: Some(commit),
        files,
    })
}

fn validate_model_id(model: &str) -> Result<(), HubError> {
    let ok_part = |p: &str| {
        !p.is_empty()
            && p != "."
            && p != ".."
            && !p.starts_with('-')
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    let parts: Vec<&str> = model.split('/').collect();
    if (parts.len() == 1 || parts.len() == 2) && parts.iter().all(|p| ok_part(p)) {
        Ok(())
    } else {
        Err(HubError::InvalidModelId(model.to_string()))
    }
}

/// The shard file names of a safetensors index (sorted, unique), refusing paths that leave the snapshot.
fn shard_names(index_path: &Path) -> Result<Vec<String>, HubError> {
    let file = index_path.display().to_string();
    let text = fs::read_to_string(index_path).map_err(io_err(index_path))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| HubError::BadIndex {
        file: file.clone(),
        message: e.to_string(),
    })?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| HubError::BadIndex {
            file: file.clone(),
            message: "no \"weight_map\" object".into(),
        })?;
    let mut names: Vec<String> = Vec::new();
    for v in map.values() {
        let name = v.as_str().ok_or_else(|| HubError::BadIndex {
            file: file.clone(),
            message: format!("shard {v} is not a string"),
        })?;
        if name.is_empty()
            || name.starts_with('/')
            || name.split('/').any(|p| p == ".." || p.is_empty())
        {
            return Err(HubError::BadIndex {
                file: file.clone(),
                message: format!("unsafe shard path {name:?}"),
            });
        }
        names.push(name.to_string());
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// The files a model uses, given what is in `dir` (weights from the index if there is one).
fn all_model_files(dir: &Path) -> Result<Vec<String>, HubError> {
    let mut files = vec!["config.json".to_string()];
    let index = dir.join(WEIGHTS_INDEX);
    if index.is_file() {
        files.push(WEIGHTS_INDEX.to_string());
        files.extend(shard_names(&index)?);
    } else {
        files.push(WEIGHTS_FILE.to_string());
    }
    files.extend(
        REQUIRED_FILES
            .iter()
            .filter(|f| **f != "config.json")
            .map(|s| s.to_string()),
    );
    files.extend(OPTIONAL_FILES.iter().map(|s| s.to_string()));
    Ok(files)
}

enum Downloaded {
    /// Path in the snapshot, commit hash.
    Present(PathBuf, String),
    /// 404; the URL asked.
    Absent(String),
}

struct RepoCache<'a> {
    config: &'a HubConfig,
    repo_id: String,
    revision: String,
    root: PathBuf,
}

impl<'a> RepoCache<'a> {
    fn new(config: &'a HubConfig, repo_id: &str, revision: &str) -> Self {
        let root = config
            .cache_dir
            .join(format!("models--{}", repo_id.replace('/', "--")));
        Self {
            config,
            repo_id: repo_id.to_string(),
            revision: revision.to_string(),
            root,
        }
    }

    fn snapshot_dir(&self, commit: &str) -> PathBuf {
        self.root.join("snapshots").join(commit)
    }

    fn not_found(&self, file: &str, url: String) -> HubError {
        HubError::NotFound {
            repo: self.repo_id.clone(),
            revision: self.revision.clone(),
            file: file.to_string(),
            url,
        }
    }

    fn offline_err(&self, missing: String) -> HubError {
        HubError::Offline {
            repo: self.repo_id.clone(),
            revision: self.revision.clone(),
            cache: self.config.cache_dir.display().to_string(),
            missing,
        }
    }

    fn write_ref(&self, commit: &str) -> Result<(), HubError> {
        if is_commit_hash(&self.revision) {
            return Ok(());
        }
        let path = self.root.join("refs").join(&self.revision);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        fs::write(&path, commit).map_err(io_err(&path))
    }

    /// Remember a 404 like huggingface_hub does (best effort: only an optimisation for offline lookups).
    fn mark_absent(&self, commit: &str, file: &str) {
        let path = self.root.join(".no_exist").join(commit).join(file);
        if let Some(parent) = path.parent() {
            if fs::create_dir_all(parent).is_ok() {
                let _ = File::create(&path);
            }
        }
    }

    fn resolve_offline(&self) -> Result<ModelFiles, HubError> {
        let commit = if is_commit_hash(&self.revision) {
            self.revision.clone()
        } else {
            let ref_path = self.root.join("refs").join(&self.revision);
            match fs::read_to_string(&ref_path) {
                Ok(c) => c.trim().to_string(),
                Err(_) => return Err(self.offline_err(format!("refs/{}", self.revision))),
            }
        };
        let dir = self.snapshot_dir(&commit);
        if !dir.is_dir() {
            return Err(self.offline_err(format!("snapshot {commit}")));
        }
        let wanted = all_model_files(&dir)?;
        let optional = |f: &str| OPTIONAL_FILES.contains(&f) || f == WEIGHTS_INDEX;
        let missing: Vec<&String> = wanted
            .iter()
            .filter(|f| !optional(f) && !dir.join(f).is_file())
            .collect();
        if let Some(first) = missing.first() {
            let more = if missing.len() > 1 {
                format!(" (and {} more)", missing.len() - 1)
            } else {
                String::new()
            };
            return Err(self.offline_err(format!("{first}{more}")));
        }
        let files = wanted
            .into_iter()
            .filter(|f| dir.join(f).is_file())
            .collect();
        Ok(ModelFiles {
            dir,
            commit: Some(commit),
            files,
        })
    }

    /// Make `file` at `revision` present in the snapshot; `Absent` on 404.
    fn download(
        &self,
        client: &Client,
        revision: &str,
        file: &str,
        progress: &mut dyn FnMut(DownloadProgress),
    ) -> Result<Downloaded, HubError> {
        // Files under a commit never change: a snapshot entry at a commit hash needs no request.
        if is_commit_hash(revision) {
            let cached = self.snapshot_dir(revision).join(file);
            if cached.is_file() {
                let size = fs::metadata(&cached).map(|m| m.len()).ok();
                progress(DownloadProgress {
                    file,
                    downloaded: size.unwrap_or(0),
                    total: size,
                    done: true,
                });
                return Ok(Downloaded::Present(cached, revision.to_string()));
            }
            if self
                .root
                .join(".no_exist")
                .join(revision)
                .join(file)
                .is_file()
            {
                return Ok(Downloaded::Absent(format!(
                    "cache: .no_exist/{revision}/{file}"
                )));
            }
        }
        let url = format!(
            "{}/{}/resolve/{}/{}",
            self.config.endpoint,
            self.repo_id,
            encode_revision(revision),
            file
        );
        let meta = match client.head(&url)? {
            Head::Found(m) => m,
            Head::NotFound => return Ok(Downloaded::Absent(url)),
            Head::Denied(status) => {
                return Err(HubError::Unauthorized {
                    repo: self.repo_id.clone(),
                    file: file.to_string(),
                    status,
                })
            }
        };
        let blobs = self.root.join("blobs");
        fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
        let blob = blobs.join(&meta.etag);
        let have_blob = fs::metadata(&blob).is_ok_and(|m| meta.size.is_none_or(|s| m.len() == s));
        if !have_blob {
            self.fetch_blob(client, &meta, file, &blob, progress)?;
        } else {
            let total = meta.size;
            progress(DownloadProgress {
                file,
                downloaded: total.unwrap_or(0),
                total,
                done: true,
            });
        }
        let link = self.snapshot_dir(&meta.commit).join(file);
        link_into_snapshot(&blob, &link)?;
        Ok(Downloaded::Present(link, meta.commit))
    }

    /// Download into `<blob>.incomplete` (resuming), verify, then publish as `<blob>`.
    fn fetch_blob(
        &self,
        client: &Client,
        meta: &FileMeta,
        file: &str,
        blob: &Path,
        progress: &mut dyn FnMut(DownloadProgress),
    ) -> Result<(), HubError> {
        let partial = blob.with_file_name(format!("{}.incomplete", meta.etag));
        let mut have = fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if meta.size.is_some_and(|s| have > s) {
            have = 0;
        }
        // Hash what we already have, so that the whole file is checked after a resume.
        let mut hasher = Sha256::new();
        if have > 0 {
            let mut f = File::open(&partial).map_err(io_err(&partial))?;
            let mut buf = vec![0u8; 1 << 16];
            let mut left = have;
            while left > 0 {
                let n = f.read(&mut buf).map_err(io_err(&partial))?;
                if n == 0 {
                    break;
                }
                let n = n.min(usize::try_from(left).unwrap_or(usize::MAX));
                hasher.update(&buf[..n]);
                left -= n as u64;
            }
            if left > 0 {
                have = 0;
                hasher = Sha256::new();
            }
        }
        let complete_already = meta.size.is_some_and(|s| s == have && have > 0);
        if !complete_already {
            tracing::info!(file, url = %meta.url, resume_from = have, "downloading");
            let (mut body, offset) = client.get(&meta.url, have)?;
            if offset == 0 && have > 0 {
                // The server ignored the Range request: start over.
                have = 0;
                hasher = Sha256::new();
            }
            let mut file_out = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(false)
                .open(&partial)
                .map_err(io_err(&partial))?;
            file_out.set_len(have).map_err(io_err(&partial))?;
            file_out.seek(SeekFrom::End(0)).map_err(io_err(&partial))?;
            let mut out = std::io::BufWriter::new(file_out);
            progress(DownloadProgress {
                file,
                downloaded: have,
                total: meta.size,
                done: false,
            });
            let mut buf = vec![0u8; 1 << 16];
            let mut last_report = have;
            loop {
                let n = match body.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        let _ = out.flush();
                        return Err(HubError::Network {
                            url: meta.url.clone(),
                            message: e.to_string(),
                        });
                    }
                };
                out.write_all(&buf[..n]).map_err(io_err(&partial))?;
                hasher.update(&buf[..n]);
                have += n as u64;
                if have - last_report >= PROGRESS_STEP {
                    last_report = have;
                    progress(DownloadProgress {
                        file,
                        downloaded: have,
                        total: meta.size,
                        done: false,
                    });
                }
            }
            out.flush().map_err(io_err(&partial))?;
        }
        let discard = || {
            let _ = fs::remove_file(&partial);
        };
        if let Some(expected) = meta.size {
            if have != expected {
                if have > expected {
                    discard();
                }
                // Shorter: the connection ended early; keep the partial file so the next attempt resumes.
                return Err(HubError::SizeMismatch {
                    file: file.to_string(),
                    expected,
                    actual: have,
                });
            }
        }
        if is_sha256(&meta.etag) {
            let actual = hex(&hasher.finalize());
            if actual != meta.etag {
                discard();
                return Err(HubError::HashMismatch {
                    file: file.to_string(),
                    expected: meta.etag.clone(),
                    actual,
                });
            }
        }
        fs::rename(&partial, blob).map_err(io_err(blob))?;
        progress(DownloadProgress {
            file,
            downloaded: have,
            total: meta.size,
            done: true,
        });
        Ok(())
    }
}

/// Create `snapshots/<commit>/<file>` pointing at the blob (relative symlink like huggingface_hub; a copy where
/// symlinks are not available).
fn link_into_snapshot(blob: &Path, link: &Path) -> Result<(), HubError> {
    let parent = link.parent().ok_or_else(|| HubError::Io {
        path: link.display().to_string(),
        source: std::io::Error::other("no parent directory"),
    })?;
    fs::create_dir_all(parent).map_err(io_err(parent))?;
    if fs::symlink_metadata(link).is_ok() {
        fs::remove_file(link).map_err(io_err(link))?;
    }
    #[cfg(unix)]
    {
        // snapshots/<commit>/<a/b/file> -> ../../(../..)blobs/<etag>
        let root = blob
            .parent()
            .and_then(Path::parent)
            .unwrap_or(Path::new("."));
        let rel_up = link
            .strip_prefix(root)
            .map(|p| p.components().count().saturating_sub(1))
            .unwrap_or(0);
        let mut target = PathBuf::new();
        for _ in 0..rel_up {
            target.push("..");
        }
        target.push("blobs");
        target.push(blob.file_name().unwrap_or_default());
        if std::os::unix::fs::symlink(&target, link).is_ok() {
            return Ok(());
        }
    }
    fs::copy(blob, link).map(|_| ()).map_err(io_err(link))
}

pub(crate) fn is_commit_hash(rev: &str) -> bool {
    rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_sha256(etag: &str) -> bool {
    etag.len() == 64 && etag.bytes().all(|b| b.is_ascii_hexdigit())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Revisions like "refs/pr/1" are one path segment in the resolve URL.
fn encode_revision(rev: &str) -> String {
    rev.replace('/', "%2F")
}
