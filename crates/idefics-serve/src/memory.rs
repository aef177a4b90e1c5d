//! The image memory budget: decoded pixels held by admitted requests (queued or running) are counted, and a
//! request whose images would push the total over `max_queued_image_bytes` is refused with a 503 instead of
//! growing the process without bound.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Bytes of decoded images held by admitted requests.
#[derive(Debug)]
pub(crate) struct ImageMemory {
    used: AtomicUsize,
    max: usize,
}

/// A request's share of the budget; released on drop (when its `BatchItem` is dropped).
#[derive(Debug)]
pub(crate) struct ImageReservation {
    pool: Arc<ImageMemory>,
    bytes: usize,
}

impl ImageMemory {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            max,
        })
    }

    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::SeqCst)
    }

    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Reserve `bytes`, or return the bytes in use when they do not fit.
    pub(crate) fn try_reserve(self: &Arc<Self>, bytes: usize) -> Result<ImageReservation, usize> {
        let mut used = self.used.load(Ordering::SeqCst);
        loop {
            let total = used.saturating_add(bytes);
            if total > self.max {
                return Err(used);
            }
            match self
                .used
                .compare_exchange(used, total, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => {
                    return Ok(ImageReservation {
                        pool: self.clone(),
                        bytes,
                    })
                }
                Err(now) => used = now,
            }
        }
    }
}

impl Drop for ImageReservation {
    fn drop(&mut self) {
        self.pool.used.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_bounded_and_released() {
        let pool = ImageMemory::new(100);
        let a = pool.try_reserve(60).unwrap();
        assert_eq!(pool.try_reserve(50).unwrap_err(), 60);
        let b = pool.try_reserve(40).unwrap();
        assert_eq!(pool.used(), 100);
        drop(a);
        drop(b);
        assert_eq!(pool.used(), 0);
    }
}
