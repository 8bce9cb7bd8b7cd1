//! switchyard: a reverse proxy that decides, per request, which version of a service answers.
//!
//! The request flow, and the module that owns each step:
//!
//! ```text
//! request ─▶ proxy::server      accept, TLS, HTTP/1.1 + HTTP/2, connection limit, idle watchdog, drain
//!         ─▶ proxy::h1          plain HTTP/1.1 requests (hyper serves the rest)
//!         ─▶ proxy              the request phases (see its docs), header hygiene, errors
//!         ─▶ routing            route match → pool (pure, compiled from config)
//!         ─▶ upstream           endpoint selection, the shared pooled client
//!         ─▶ proxy::body        response streamed back; access log when it ends
//! ```
//!
//! - [`config`] turns the TOML file into a [`routing::Snapshot`], reporting every error with its
//!   line, column, field and fix.
//! - [`demo`] is `switchyard demo`: built-in upstreams and config.
//! - [`logging`] sets up `tracing` (text or JSON).

pub mod admin;
pub mod app;
pub mod config;
pub mod demo;
pub mod guard;
pub mod http1;
pub mod logging;
pub mod proxy;
pub mod reload;
pub mod routing;
pub mod state;
pub mod upstream;

pub use app::{App, Source};
pub use proxy::server::Server;
pub use routing::Snapshot;
