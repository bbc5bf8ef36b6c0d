//! The user's guide: what the README's front page leaves out, one page per subject.
//!
//! Every page is a module with documentation only (no items), written in Markdown
//! beside this file (`src/guide/*.md`) and included here, so that each example in it
//! is compiled and run as a doctest.
//!
//! - [`sources`]: Cloud Map's API (also against moto, LocalStack or a VPC endpoint),
//!   shared namespaces, DNS records, a registry in memory or a JSON file.
//! - [`options`]: every option of the resolver, its default and what it does.
//! - [`selection`]: round-robin, weighted, random, least-loaded; which to choose;
//!   leases for your own I/O.
//! - [`failures`]: when things fail (failover, ejection, serve-stale, the retry
//!   budget), `call`, and the errors.
//! - [`registration`]: registering this process and draining it on shutdown.
//! - [`watch`]: change streams for connection pools and tower's balancers.
//! - [`integrations`]: reqwest, hyper, tower, tonic and the `cloudmap-discover` CLI.
//! - [`metrics`]: the `metrics` series (feature `metrics`).
//! - [`fleet`]: running a fleet within the account's quota.
//! - [`performance`]: what a warm lookup costs, and how it is measured.
//! - [`health`]: endpoint health beyond the registry: failure-percentage ejection
//!   and active health checks.
//! - [`safety`]: addresses never handed out, requests never sent twice, no panics.
//! - [`hedging`]: hedged requests: when they help, when they double the load,
//!   idempotency.
//! - [`zones`]: zone-aware routing: staying in the caller's availability zone.

#[doc = include_str!("sources.md")]
pub mod sources {}

#[doc = include_str!("options.md")]
pub mod options {}

#[doc = include_str!("selection.md")]
pub mod selection {}

#[doc = include_str!("failures.md")]
pub mod failures {}

#[doc = include_str!("registration.md")]
pub mod registration {}

#[doc = include_str!("watch.md")]
pub mod watch {}

#[doc = include_str!("integrations.md")]
pub mod integrations {}

#[doc = include_str!("metrics.md")]
pub mod metrics {}

#[doc = include_str!("fleet.md")]
pub mod fleet {}

#[doc = include_str!("performance.md")]
pub mod performance {}

#[doc = include_str!("safety.md")]
pub mod safety {}

#[doc = include_str!("hedging.md")]
pub mod hedging {}
#[doc = include_str!("health.md")]
pub mod health {}
#[doc = include_str!("zones.md")]
pub mod zones {}
