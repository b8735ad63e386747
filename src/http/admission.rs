//! Admission control before any body is read: a scoring request holds one of a bounded number of
//! slots and its declared body size from a bounded byte budget, from its headers until its
//! response. A request that finds either exhausted waits for them, its body unread, in arrival
//! order, for at most the admission wait, and is then refused with 503. Reading and parsing the
//! bodies of requests that are then refused collapses the served rate under overload, and
//! refusing at once lets clients that retry straight away resend their bodies without pause
//! (docs/benchmarks.md has both measurements).
use super::error::ApiError;
use super::AppState;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The byte budget is counted in KiB, so that a u32 permit count covers any body size.
const UNIT: usize = 1024;

#[derive(Clone)]
pub struct Admission {
    slots: Arc<Semaphore>,
    kib: Arc<Semaphore>,
    slot_count: usize,
    kib_count: usize,
}

/// Held from the headers to the response.
pub struct Admitted {
    _slot: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
}

impl Admission {
    /// At most `slots` requests and `max_bytes` of declared bodies at once.
    pub fn new(slots: usize, max_bytes: usize) -> Admission {
        let slots = slots.max(1);
        let kib = (max_bytes / UNIT).clamp(1, u32::MAX as usize);
        Admission {
            slots: Arc::new(Semaphore::new(slots)),
            kib: Arc::new(Semaphore::new(kib)),
            slot_count: slots,
            kib_count: kib,
        }
    }

    /// A slot and `bytes` of the budget, or None when either is used up. A body larger than the
    /// whole budget takes all of it.
    pub fn try_admit(&self, bytes: usize) -> Option<Admitted> {
        let slot = self.slots.clone().try_acquire_owned().ok()?;
        let units = bytes.div_ceil(UNIT);
        let bytes = if units == 0 {
            None
        } else {
            let units = u32::try_from(units.min(self.kib_count)).unwrap_or(u32::MAX);
            Some(self.kib.clone().try_acquire_many_owned(units).ok()?)
        };
        Some(Admitted { _slot: slot, _bytes: bytes })
    }

    /// `try_admit`, or else waits up to `wait` for room, first come first served.
    pub async fn admit(&self, bytes: usize, wait: Duration) -> Option<Admitted> {
        if let Some(admitted) = self.try_admit(bytes) {
            return Some(admitted);
        }
        let units = u32::try_from(bytes.div_ceil(UNIT).min(self.kib_count)).unwrap_or(u32::MAX);
        let acquire = async {
            let slot = self.slots.clone().acquire_owned().await.ok()?;
            let bytes = match units {
                0 => None,
                n => Some(self.kib.clone().acquire_many_owned(n).await.ok()?),
            };
            Some(Admitted { _slot: slot, _bytes: bytes })
        };
        tokio::time::timeout(wait, acquire).await.ok().flatten()
    }

    /// Requests admitted right now.
    pub fn in_use(&self) -> usize {
        self.slot_count - self.slots.available_permits()
    }
}

/// The body size a request declares; None for a chunked body.
pub fn declared_length(headers: &HeaderMap) -> Option<usize> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// Middleware on the scoring routes: 413 at once for a declared body over the limit, 503 when no
/// room came within the admission wait; either way the body is not read and the connection is
/// closed after the answer (its unread body would otherwise be parsed as the next request).
pub async fn admit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let max_body = state.limits.max_body_bytes;
    let declared = declared_length(req.headers());
    if let Some(n) = declared.filter(|n| *n > max_body) {
        let e = ApiError::PayloadTooLarge(format!("the request body is {n} bytes; the limit is {max_body}"));
        return closing(e.into_response());
    }
    // A chunked body may grow to the limit: it reserves that much.
    let wait = state.limits.admission_wait;
    let Some(admitted) = state.admission.admit(declared.unwrap_or(max_body), wait).await else {
        state.metrics.rejected.inc();
        return closing(ApiError::Busy.into_response());
    };
    state.metrics.admitted.set(state.admission.in_use() as i64);
    let response = next.run(req).await;
    drop(admitted);
    state.metrics.admitted.set(state.admission.in_use() as i64);
    response
}

fn closing(mut response: Response) -> Response {
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_and_bytes_both_bound_admission() {
        let a = Admission::new(2, 10 * UNIT);
        let first = a.try_admit(6 * UNIT).expect("room");
        assert!(a.try_admit(6 * UNIT).is_none(), "the byte budget is spent");
        let second = a.try_admit(4 * UNIT).expect("room for 4 KiB");
        assert_eq!(a.in_use(), 2);
        assert!(a.try_admit(0).is_none(), "both slots are taken");
        drop(first);
        assert!(a.try_admit(6 * UNIT).is_some(), "released on drop");
        drop(second);
        assert_eq!(a.in_use(), 0);
    }

    #[tokio::test]
    async fn a_waiting_request_is_admitted_when_room_frees_up_or_refused_after_the_wait() {
        let a = Admission::new(1, 10 * UNIT);
        let held = a.try_admit(UNIT).expect("room");
        assert!(a.admit(UNIT, Duration::from_millis(50)).await.is_none(), "refused after the wait");
        let waiter = {
            let a = a.clone();
            tokio::spawn(async move { a.admit(UNIT, Duration::from_secs(3600)).await.is_some() })
        };
        tokio::task::yield_now().await;
        drop(held);
        assert!(waiter.await.expect("join"), "admitted once the slot was freed");
    }

    #[test]
    fn a_body_larger_than_the_budget_takes_all_of_it() {
        let a = Admission::new(4, 10 * UNIT);
        let big = a.try_admit(100 * UNIT).expect("admitted alone");
        assert!(a.try_admit(1).is_none());
        drop(big);
        assert!(a.try_admit(1).is_some());
    }
}
