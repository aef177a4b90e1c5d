//! The two HTTP calls the Hub protocol needs: HEAD (metadata: commit, etag, size, redirect) and a ranged GET.

use std::time::Duration;

use super::{is_commit_hash, HubConfig, HubError};

/// HEAD answer for one file.
pub(crate) struct FileMeta {
    pub(crate) commit: String,
    pub(crate) etag: String,
    pub(crate) size: Option<u64>,
    /// Where to GET the bytes (the resolve URL, or the redirect target the Hub gave).
    pub(crate) url: String,
}

/// `"abc"` / `W/"abc"` -> `abc`.
fn normalize_etag(raw: &str) -> String {
    raw.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_string()
}

pub(crate) enum Head {
    Found(FileMeta),
    NotFound,
    Denied(u16),
}

pub(crate) struct Client {
    /// No redirects: the HEAD answer (a 302 for LFS files) carries the metadata.
    no_redirect: ureq::Agent,
    /// Follows redirects (to the CDN for LFS files); auth headers are not forwarded to other hosts.
    follow: ureq::Agent,
    token: Option<String>,
}

impl Client {
    pub(crate) fn new(config: &HubConfig) -> Self {
        let build = |redirects: u32| -> ureq::Agent {
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .max_redirects(redirects)
                .max_redirects_will_error(false)
                .timeout_connect(Some(Duration::from_secs(30)))
                .timeout_recv_response(Some(Duration::from_secs(60)))
                .timeout_recv_body(None)
                .user_agent(concat!("idefics-rs/", env!("CARGO_PKG_VERSION")))
                .build()
                .into()
        };
        Self {
            no_redirect: build(0),
            follow: build(10),
            token: config.token.clone(),
        }
    }

    fn auth<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(t) => req.header("Authorization", format!("Bearer {t}")),
            None => req,
        }
    }

    pub(crate) fn head(&self, url: &str) -> Result<Head, HubError> {
        let mut url = url.to_string();
        // Follow relative redirects (renamed repositories) but not absolute ones (CDN), like huggingface_hub.
        for _ in 0..5 {
            let req = self
                .auth(self.no_redirect.head(&url))
                .header("Accept-Encoding", "identity");
            let resp = req.call().map_err(|e| HubError::Network {
                url: url.clone(),
                message: e.to_string(),
            })?;
            let status = resp.status().as_u16();
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            match status {
                404 => return Ok(Head::NotFound),
                401 | 403 => return Ok(Head::Denied(status)),
                200..=399 => {}
                _ => return Err(HubError::Http { url, status }),
            }
            let location = header("location");
            if (300..=399).contains(&status) && header("x-linked-etag").is_none() {
                if let Some(loc) = location.as_deref().filter(|l| l.starts_with('/')) {
                    let base = url.split('/').take(3).collect::<Vec<_>>().join("/");
                    url = format!("{base}{loc}");
                    continue;
                }
            }
            let bad = |message: &str| HubError::BadResponse {
                url: url.clone(),
                message: message.to_string(),
            };
            let commit = header("x-repo-commit").ok_or_else(|| bad("no X-Repo-Commit header"))?;
            let etag = header("x-linked-etag")
                .or_else(|| header("etag"))
                .map(|e| normalize_etag(&e))
                .filter(|e| !e.is_empty() && !e.contains(['/', '\\']) && e != "." && e != "..")
                .ok_or_else(|| bad("no usable ETag header"))?;
            if !is_commit_hash(&commit) {
                return Err(bad("X-Repo-Commit is not a commit hash"));
            }
            let size = header("x-linked-size")
                .or_else(|| {
                    if (200..=299).contains(&status) {
                        header("content-length")
                    } else {
                        None
                    }
                })
                .and_then(|s| s.trim().parse::<u64>().ok());
            let get_url = match location {
                Some(loc) if (300..=399).contains(&status) && !loc.starts_with('/') => loc,
                _ => url.clone(),
            };
            return Ok(Head::Found(FileMeta {
                commit,
                etag,
                size,
                url: get_url,
            }));
        }
        Err(HubError::BadResponse {
            url,
            message: "too many redirects".into(),
        })
    }

    /// GET from `offset`; returns the body reader and the offset the body starts at (0 if the range was ignored).
    pub(crate) fn get(
        &self,
        url: &str,
        offset: u64,
    ) -> Result<(ureq::BodyReader<'static>, u64), HubError> {
        let mut req = self
            .auth(self.follow.get(url))
            .header("Accept-Encoding", "identity");
        if offset > 0 {
            req = req.header("Range", format!("bytes={offset}-"));
        }
        let resp = req.call().map_err(|e| HubError::Network {
            url: url.to_string(),
            message: e.to_string(),
        })?;
        let status = resp.status().as_u16();
        let start = match status {
            206 => offset,
            200 => 0,
            _ => {
                return Err(HubError::Http {
                    url: url.to_string(),
                    status,
                })
            }
        };
        Ok((resp.into_body().into_reader(), start))
    }
}
