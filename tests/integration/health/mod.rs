//! Endpoint health beyond the registry (issue 28): failure-percentage ejection
//! (paused clock, counts and shares) and active health checks against loopback
//! backends (real sockets, small intervals; counts and states, never timings).

#[cfg(feature = "tonic")]
mod grpc;
mod pacing;
mod percentage;
mod probe;
