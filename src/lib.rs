//! switchyard: a reverse proxy that decides, per request, which version of a service answers.
//!
//! The request flow, and the module that owns each step:
//!
//! ```text
//! request ─▶ proxy::server      accept, TLS and ALPN, connection limit, idle watchdog, drain
//!         ─▶ proxy::h1          HTTP/1.x requests, heads and bodies (hyper serves HTTP/2)
//!         ─▶ proxy              the request phases (see its docs), header hygiene, errors
//!         ─▶ routing            target (host, path) → route → pool (pure, compiled from config)
//!         ─▶ upstream           endpoint selection, the shared pooled client
//!         ─▶ proxy::body        response streamed back; access log when it ends
//! ```
//!
//! - [`http1`] is HTTP/1 framing for both sides: the head parser, the `Connection`/`TE`/
//!   `Trailer` lists, framing decisions and the chunked coding.
//!
//! - [`config`] turns the TOML file into a [`config::Compiled`] config (a function of the
//!   text), reporting every error with its line, column, field and fix; [`runtime::assemble`]
//!   makes it the live [`runtime::Snapshot`], carrying the previous one's live state over.
//! - ARCHITECTURE.md draws the floors the modules sit on; `tests/layout.rs` keeps them.
//! - [`demo`] is `switchyard demo`: built-in upstreams and config.
//! - [`cli`] is what the commands other than `run` do: find a proxy's admin API, read its live
//!   state, `explain`, `diff`, `status`.
//! - [`logging`] sets up `tracing` (text or JSON).

// `unsafe` is denied everywhere but in the five places that need it, each allowed by name
// with its SAFETY argument: `http1::put_field` and `http1::head::fields` (the head writer's and
// parser's buffers), `http1::accepted_value` (a parsed value taken without checking it twice),
// and, in the binary, mimalloc's option calls.
#![deny(unsafe_code)]

pub mod admin;
pub mod analysis;
pub mod app;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod demo;
pub mod egress;
pub mod experiments;
pub mod flagsync;
pub mod fleet;
pub mod guard;
pub mod http1;
pub mod logging;
pub mod metrics;
pub mod mirror;
pub mod notify;
pub mod persist;
pub mod prometheus;
pub mod proxy;
pub mod reload;
pub mod routing;
pub mod runtime;
pub mod tls;
pub mod trace;
pub mod upstream;

pub use app::{App, Source};
pub use proxy::server::Server;
pub use runtime::Snapshot;
