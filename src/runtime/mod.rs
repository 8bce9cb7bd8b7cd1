//! The live state around the pure routing table: the snapshot every request reads (the
//! [`crate::routing::Table`] with the pools, metric series and per-route guards and mirrors).

pub mod overlay;
mod series;
pub mod snapshot;
pub mod state;

pub use crate::config::RouteExtras;
pub use snapshot::{assemble, load, load_str, Snapshot};
