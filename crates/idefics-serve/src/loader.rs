//! Loading a request's images: fetched without a decoding slot, decoded and reduced inside one, reserved
//! against the image memory budget, and put back in message order.

use std::sync::Arc;

use idefics::processor::{ChatMessage, ContentPart, RgbImage};

use crate::api::{ChatRequest, RawPart};
use crate::engine::ChatPrompt;
use crate::error::ApiError;
use crate::fetch::FetchCancel;
use crate::images::{decode_from, is_remote, load_image_bytes, Source};
use crate::memory::ImageReservation;
use crate::server::AppState;

/// Cancels a network fetch when dropped while armed (the request went away before the fetch finished).
struct CancelFetchOnDrop(Option<FetchCancel>);

impl Drop for CancelFetchOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.cancel();
        }
    }
}

/// Load one image: fetch without a decoding slot (network waits must not block other requests' decoding), then
/// decode and reduce inside one.
async fn load_one(
    st: Arc<AppState>,
    url: String,
    index: usize,
    split: Option<bool>,
) -> Result<RgbImage, ApiError> {
    let cfg = st.config.clone();
    let fetched = if is_remote(&url) {
        let _slot = st
            .fetches
            .acquire()
            .await
            .map_err(|_| ApiError::overloaded("server is shutting down"))?;
        let cancel = FetchCancel::default();
        let mut guard = CancelFetchOnDrop(Some(cancel.clone()));
        let (url, cfg) = (url.clone(), cfg.clone());
        let bytes =
            tokio::task::spawn_blocking(move || load_image_bytes(&url, index, &cfg, &cancel))
                .await
                .unwrap_or_else(|e| {
                    Err(ApiError::internal(format!(
                        "image {index}: fetch failed: {e}"
                    )))
                })?;
        guard.0 = None;
        Some(bytes)
    } else {
        None
    };
    let _slot = st
        .preprocess
        .acquire()
        .await
        .map_err(|_| ApiError::overloaded("server is shutting down"))?;
    let engine = st.engine.clone();
    tokio::task::spawn_blocking(move || {
        let (bytes, source) = match fetched {
            Some(b) => (b, Source::Remote),
            None => (
                load_image_bytes(&url, index, &cfg, &FetchCancel::default())?,
                Source::Client,
            ),
        };
        let image = decode_from(&bytes, index, cfg.max_image_pixels, source)?;
        drop(bytes);
        Ok(engine.reduce_image(image, split))
    })
    .await
    .unwrap_or_else(|e| {
        Err(ApiError::internal(format!(
            "image {index}: decoder failed: {e}"
        )))
    })
}

/// Fetch and decode every image (concurrently, decoding bounded by `preprocess_concurrency`), keeping message
/// order, and reserve their memory. Dropping this future (the client left) aborts the loads and their fetches.
pub(crate) async fn load_prompt(
    st: &Arc<AppState>,
    req: &ChatRequest,
) -> Result<(ChatPrompt, Option<ImageReservation>), ApiError> {
    // One splitting flag per request (the first `detail` that names one), as the engine applies it.
    let split = req
        .messages
        .iter()
        .flat_map(|m| &m.parts)
        .find_map(|p| match p {
            RawPart::Image { split, .. } => *split,
            RawPart::Text(_) => None,
        });
    let mut tasks = tokio::task::JoinSet::new();
    let mut n = 0usize;
    for part in req.messages.iter().flat_map(|m| &m.parts) {
        if let RawPart::Image { url, param, .. } = part {
            let index = n;
            n += 1;
            let (url, param, st) = (url.clone(), param.clone(), st.clone());
            tasks.spawn(async move {
                let r = load_one(st, url, index, split).await.map_err(|e| {
                    if e.param.is_none() {
                        e.at(param)
                    } else {
                        e
                    }
                });
                (index, r)
            });
        }
    }
    let mut loaded: Vec<Option<RgbImage>> = (0..n).map(|_| None).collect();
    let mut first_error: Option<(usize, ApiError)> = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((index, Ok(image))) => loaded[index] = Some(image),
            Ok((index, Err(e))) => {
                // The lowest-numbered failing image is reported, whatever finished first.
                if first_error.as_ref().is_none_or(|(i, _)| index < *i) {
                    first_error = Some((index, e));
                }
            }
            Err(e) => return Err(ApiError::internal(format!("image task failed: {e}"))),
        }
    }
    if let Some((_, e)) = first_error {
        return Err(e);
    }
    let bytes: usize = loaded.iter().flatten().map(|i| i.as_bytes().len()).sum();
    let reservation = if bytes == 0 {
        None
    } else {
        let budget = st.image_memory.max();
        if bytes > budget {
            return Err(ApiError::bad_request(
                "image_too_large",
                format!(
                    "the request's images take {bytes} bytes decoded, more than the server's image memory budget of {budget} bytes"
                ),
            )
            .at("messages"));
        }
        Some(st.image_memory.try_reserve(bytes).map_err(|used| {
            ApiError::overloaded(format!(
                "server is busy: queued requests' images use {used} of {budget} bytes; retry later"
            ))
        })?)
    };
    let images: Vec<RgbImage> = loaded
        .into_iter()
        .collect::<Option<_>>()
        .ok_or_else(|| ApiError::internal("image count changed while loading"))?;
    Ok((assemble_prompt(req, images)?, reservation))
}

/// One splitting flag per request (the first `detail` that names one), as the engine applies it.
pub fn request_split(req: &ChatRequest) -> Option<bool> {
    req.messages
        .iter()
        .flat_map(|m| &m.parts)
        .find_map(|p| match p {
            RawPart::Image { split, .. } => *split,
            RawPart::Text(_) => None,
        })
}

/// The prompt of a parsed request, given its images decoded in message order (one per image part). Public so
/// that the request -> prompt path can be driven without a socket (tests/fuzz_chat_request.rs).
pub fn assemble_prompt(req: &ChatRequest, images: Vec<RgbImage>) -> Result<ChatPrompt, ApiError> {
    if images.len() != req.image_count() {
        return Err(ApiError::internal(format!(
            "{} images loaded for {} image parts",
            images.len(),
            req.image_count()
        )));
    }
    let mut image_splits = Vec::with_capacity(images.len());
    let messages = req
        .messages
        .iter()
        .map(|m| {
            let parts = m
                .parts
                .iter()
                .map(|part| match part {
                    RawPart::Text(t) => ContentPart::Text { text: t.clone() },
                    RawPart::Image { split, .. } => {
                        image_splits.push(*split);
                        ContentPart::Image {}
                    }
                })
                .collect();
            ChatMessage::parts(m.role.as_str(), parts)
        })
        .collect();
    Ok(ChatPrompt {
        messages,
        images,
        image_splits,
    })
}
