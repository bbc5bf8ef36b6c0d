//! Padding against false sharing.
//!
//! Re-exports crossbeam-utils' `CachePadded`, which pads to the line pair the
//! prefetcher fetches together (128 bytes on x86_64 and aarch64, 64 elsewhere):
//! per-stripe counters and flags read by every warm pick sit alone on their lines,
//! so that writes on one core do not evict them from the others' caches.

pub(crate) use crossbeam_utils::CachePadded;
