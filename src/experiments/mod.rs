//! Experiment results (issue 15, in progress): the pieces built so far are the distinct-user
//! sketch ([`hll`]) and the statistics ([`stats`]). Counting exposures and conversions on the
//! request path, the API, the CLI's merge, persistence and metrics are not built yet.

pub mod hll;
pub mod stats;
