//! Backpressure: at most `max_concurrency` model executions run at once, at most
//! `max_queue` requests wait for one, and a request beyond that is refused at
//! once (429) instead of growing memory.
//!
//! Design: a semaphore of execution permits plus a counter of waiters. A permit
//! moves into the blocking task that runs the model, so it is released when the
//! run ends even if the request that asked for it was cancelled (client gone,
//! timeout); a [`QueueSlot`] releases its place on drop for the same reason.
//! Tokio's semaphore hands freed permits to waiters in order, so the queue is
//! first come, first served.
//!
//! It does not decide what runs (that is the router and the batcher).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ServeError;
use super::metrics::{GaugeGuard, Series};

/// Execution permits and the bounded queue in front of them.
#[derive(Debug)]
pub(crate) struct Admission {
    permits: Arc<Semaphore>,
    // invariant: waiting <= max_queue, counted by live `QueueSlot`s.
    waiting: AtomicUsize,
    max_queue: usize,
}

/// A place in the queue; given back on drop.
#[derive(Debug)]
pub(crate) struct QueueSlot {
    admission: Arc<Admission>,
    _gauge: GaugeGuard,
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.admission.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What [`Admission::enter`] granted.
#[derive(Debug)]
pub(crate) enum Entry {
    /// A permit was free.
    Now(OwnedSemaphorePermit),
    /// A place in the queue; wait for a permit with [`Entry::permit`].
    Queued(QueueSlot),
}

impl Entry {
    /// The execution permit, waiting for it if queued.
    ///
    /// # Errors
    ///
    /// [`ServeError::Overloaded`] if the semaphore was closed (it never is).
    pub(crate) async fn permit(self) -> Result<OwnedSemaphorePermit, ServeError> {
        match self {
            Self::Now(p) => Ok(p),
            Self::Queued(slot) => {
                let p = slot.admission.permit().await;
                drop(slot);
                p
            }
        }
    }
}

impl Admission {
    /// `max_concurrency` permits (at least one) and room for `max_queue` waiters.
    pub(crate) fn new(max_concurrency: usize, max_queue: usize) -> Arc<Self> {
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(max_concurrency.max(1))),
            waiting: AtomicUsize::new(0),
            max_queue,
        })
    }

    /// A permit if one is free, else a queue slot, counted on `series`.
    ///
    /// # Errors
    ///
    /// [`ServeError::Overloaded`] when the queue is full.
    pub(crate) fn enter(self: &Arc<Self>, series: &Arc<Series>) -> Result<Entry, ServeError> {
        if let Some(p) = self.try_permit() {
            return Ok(Entry::Now(p));
        }
        self.reserve(series).map(Entry::Queued)
    }

    /// A queue slot, counted on `series`.
    ///
    /// # Errors
    ///
    /// [`ServeError::Overloaded`] when the queue is full.
    pub(crate) fn reserve(self: &Arc<Self>, series: &Arc<Series>) -> Result<QueueSlot, ServeError> {
        let taken = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (w < self.max_queue).then_some(w + 1)
            });
        match taken {
            Ok(_) => Ok(QueueSlot {
                admission: Arc::clone(self),
                _gauge: series.queued(),
            }),
            Err(_) => Err(ServeError::Overloaded),
        }
    }

    /// True when a request arriving now would be refused: no free permit and a
    /// full queue. A hint only (it reserves nothing), used to refuse before
    /// decoding a body that would be refused anyway.
    pub(crate) fn saturated(&self) -> bool {
        self.permits.available_permits() == 0
            && self.waiting.load(Ordering::Acquire) >= self.max_queue
    }

    /// A permit if one is free now (mirrors never wait).
    pub(crate) fn try_permit(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.permits).try_acquire_owned().ok()
    }

    /// Waits for a permit.
    ///
    /// # Errors
    ///
    /// [`ServeError::Overloaded`] if the semaphore was closed (it never is).
    pub(crate) async fn permit(&self) -> Result<OwnedSemaphorePermit, ServeError> {
        Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| ServeError::Overloaded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::metrics::Metrics;

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_frees_on_drop() {
        let m = Metrics::default();
        let s = m.series("e", "d", false);
        let a = Admission::new(1, 1);
        let running = a.enter(&s).unwrap();
        assert!(matches!(running, Entry::Now(_)));
        let queued = a.enter(&s).unwrap();
        assert!(matches!(queued, Entry::Queued(_)));
        assert_eq!(a.enter(&s).unwrap_err(), ServeError::Overloaded);
        // The queued request is cancelled: its place frees.
        drop(queued);
        let queued = a.enter(&s).unwrap();
        let waiter = tokio::spawn(async move { queued.permit().await.map(drop) });
        drop(running);
        waiter.await.unwrap().unwrap();
        assert_eq!(m.snapshot().series[0].queue_depth, 0);
    }
}
