//! The Musketeer coordinator: it accepts jobs over HTTPS, splits them into
//! tasks, leases batches of tasks to agents, takes their results back and
//! reduces them into each job's answer.
//!
//! # Layout
//! - [`server`]: start-up: data directory, trust material, listener.
//! - [`pki`]: the self-made CA, the server certificate, the admin token.
//! - [`api`]: the HTTP API (jobs, tokens, agents, the agent protocol,
//!   dashboard and metrics).
//! - [`clock`]: the time in ms since the epoch, and a clock tests move.
//! - [`scheduler`]: long-poll leasing, result intake, lease expiry, reduce.
//! - [`store`]: all state behind one trait; [`store::sqlite`] is the
//!   embedded, durable default.
//! - [`cli`]: the admin CLI, a client of the API.
//! - [`demo`]: the whole system on one machine.
//! - [`releases`]: signed agent releases and the operator's release key.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod api;
pub mod cli;
pub mod clock;
pub mod demo;
pub mod pki;
pub mod releases;
pub mod scheduler;
pub mod server;
pub mod store;
