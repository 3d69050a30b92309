//! The Musketeer coordinator: it accepts jobs over HTTPS, splits them into
//! tasks, leases batches of tasks to agents, takes their results back and
//! reduces them into each job's answer.
//!
//! # Layout
//! - [`server`]: start-up: data directory, trust material, store, listener.
//! - [`pki`]: the self-made CA, the server certificate, the admin token.
//! - [`api`]: the HTTP API: one route table ([`api::routes`]), handlers for
//!   jobs, tokens, agents, the agent protocol, releases, the dashboard and
//!   metrics, auth and rate limits, and the one error shape
//!   ([`api::ApiError`]; a store failure is a 500 without the driver's text).
//! - [`clock`]: the time in ms since the epoch, and a clock tests move.
//! - [`metrics`]: the histograms `/metrics` shows (lease latency, task CPU
//!   time and job duration per kernel).
//! - [`scheduler`]: long-poll leasing, result intake (where an agent's CPU
//!   figure is clamped), lease expiry, the reduce of finished jobs; what an
//!   agent offers (`matching`), why a job waits (`why`), results per second
//!   (`throughput`).
//! - [`store`]: all state behind the [`store::Store`] trait:
//!   - [`store::rules`]: the lease and retry rules, written once, with the
//!     Lua the Redis scripts get generated from them;
//!   - [`store::validation`]: the vote rules (quorum, trust) of redundancy;
//!   - [`store::sqlite`]: the embedded, durable default (schema, jobs,
//!     leasing, results and votes, agents and tokens);
//!   - [`store::redis`]: the shared store for several coordinators (keys,
//!     scripts, reply decoding, then the same operations);
//!   - [`store::blobs`]: large task inputs as files beside the database.
//! - [`timing`]: the delay and expiry options of a job (`countdown_s`,
//!   `not_before`, `expires`, `result_ttl_s`) resolved into store times.
//! - [`workflows`]: graphs of jobs (chain, group, chord) kept in the store:
//!   the graph checked at submission, steps released as their needs succeed,
//!   results fed into the steps after on the coordinator.
//! - [`schedules`]: cron schedules with time zones (Celery beat), each tick
//!   claimed once in the store across coordinators.
//! - [`cli`]: the admin CLI, over the `musketeer-client` crate.
//! - `demo` (feature `demo`, on by default): the whole system on one
//!   machine, with agents in-process; the static coordinator leaves it out.
//! - [`releases`]: signed agent releases and the operator's release key.
//! - [`space`]: running out of disk or Redis memory: the free-disk reserve,
//!   the degraded state `/healthz` reports, what counts as "full".
//!
//! Kernels, their names and wire tags live in `musketeer-tasks`
//! (`musketeer_tasks::registry`): nothing here lists them.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod api;
pub mod cli;
pub mod clock;
#[cfg(feature = "demo")]
pub mod demo;
pub mod metrics;
pub mod modules;
pub mod pki;
pub mod releases;
pub mod scheduler;
pub mod schedules;
pub mod server;
pub mod space;
pub mod store;
pub mod timing;
pub mod workflows;
