//! `507 Insufficient Storage`, in one place: the refusals of writes that
//! would not fit, the store's own "full", and the watch that counts them
//! and tells `/healthz` (see [`crate::space`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::error::ErrorCode;
use super::{ApiError, AppState};
use crate::space::NoRoom;
use crate::store::StoreError;

/// Refused before writing: the write would leave less than the reserve.
pub const INSUFFICIENT_STORAGE: &str = "insufficient_storage";
/// A write failed because the disk or Redis memory is full.
pub const STORE_FULL: &str = "store_full";

impl From<NoRoom> for ApiError {
    fn from(e: NoRoom) -> ApiError {
        ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            INSUFFICIENT_STORAGE,
            e.to_string(),
        )
    }
}

/// The store failed for lack of room: the driver's text goes to the log,
/// the caller learns what happened and what to do.
pub fn store_full(e: &StoreError) -> ApiError {
    tracing::warn!("the store is out of space: {e}");
    ApiError::new(
        StatusCode::INSUFFICIENT_STORAGE,
        STORE_FULL,
        "the coordinator is out of storage space (its disk is full, or Redis reached its \
         maxmemory), so this change was not made; reads still work. Purge finished jobs \
         (DELETE /v1/jobs/ID), free disk space or raise Redis maxmemory, then try again",
    )
}

/// A file could not be written for lack of disk space.
pub fn disk_full(e: &dyn std::fmt::Display) -> ApiError {
    tracing::warn!("the disk is full: {e}");
    ApiError::new(
        StatusCode::INSUFFICIENT_STORAGE,
        STORE_FULL,
        "the coordinator's disk is full, so this change was not made; reads still work. \
         Purge finished jobs (DELETE /v1/jobs/ID) or free disk space, then try again",
    )
}

/// The body's announced length, if any.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Refuses a write of `bytes` (0: unknown) that would not leave the reserve.
pub fn check_room(st: &AppState, bytes: u64) -> Result<(), ApiError> {
    Ok(st.space.room_for(bytes)?)
}

/// Counts every `507` for `/metrics`, marks the store full when a write
/// failed for lack of room, and clears that mark when something is created
/// (a job accepted, a token made): the store has room again. Other
/// successes prove nothing: an empty lease or a heartbeat may write nothing.
pub async fn watch(State(st): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    if response.status() == StatusCode::INSUFFICIENT_STORAGE {
        st.space.refused.fetch_add(1, Ordering::Relaxed);
        if response.extensions().get::<ErrorCode>() == Some(&ErrorCode(STORE_FULL)) {
            st.space.store_refused();
        }
    } else if response.status() == StatusCode::CREATED {
        st.space.store_wrote();
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enospc() -> std::io::Error {
        std::io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error())
    }

    #[test]
    fn a_full_disk_is_a_507_without_the_drivers_text() {
        let from_store = ApiError::from(StoreError::Io(enospc()));
        let from_release = ApiError::from(crate::releases::ReleaseError::Io {
            path: "releases/x".into(),
            source: enospc(),
        });
        for e in [from_store, from_release] {
            assert_eq!(e.status, StatusCode::INSUFFICIENT_STORAGE);
            assert_eq!(e.code, STORE_FULL);
            assert!(!e.message.contains("os error"), "{}", e.message);
            assert!(e.message.contains("free disk space"), "{}", e.message);
        }
        // Another I/O failure is not mistaken for a full disk.
        let denied = StoreError::Io(std::io::ErrorKind::PermissionDenied.into());
        assert_eq!(
            ApiError::from(denied).status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn an_upload_that_does_not_fit_is_a_507_with_the_numbers() {
        let e = ApiError::from(NoRoom {
            free: 3 << 20,
            needed: 40 << 20,
            min_free: 256 << 20,
        });
        assert_eq!(e.status, StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(e.code, INSUFFICIENT_STORAGE);
        for part in ["3.0 MiB free", "needs 40.0 MiB", "256.0 MiB must stay free"] {
            assert!(e.message.contains(part), "{part:?} in {}", e.message);
        }
    }
}
