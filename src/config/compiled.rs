//! [`Compiled`]: one config revision, compiled: the routing table and what serves it.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use super::{AdminSettings, FleetSettings, Listen};
use crate::guard::{GuardConfig, RolloutConfig};
use crate::mirror::MirrorConfig;
use crate::routing::{Route, Table};
use crate::upstream::Pool;

/// Everything one config revision decides: the routing table (it derefs to it), the pools,
/// the routes' guards, rollouts and mirrors, and the control plane's settings.
/// [`crate::runtime::assemble`] makes a live snapshot of it.
#[derive(Clone)]
pub struct Compiled {
    /// What requests' decisions read.
    pub routing: Table,
    /// Short hash of the config text this snapshot was compiled from.
    pub revision: String,
    pub listen: Listen,
    /// Whether one access-log line is written per request.
    pub access_log: bool,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Pools by index (the routing table's pool indices).
    pub pools: Vec<Arc<Pool>>,
    /// `[admin]`, if set. Like the listeners, it cannot change by reload.
    pub admin: Option<AdminSettings>,
    /// `[state] path`, relative paths resolved against the config's directory; `None`: beside
    /// the config file. It cannot change by reload.
    pub state_path: Option<std::path::PathBuf>,
    /// `[[notify]]` entries: where webhooks go.
    pub notify: Vec<crate::notify::NotifyConfig>,
    /// `[fleet]`: judge and agree with the other replicas through Prometheus.
    pub fleet: Option<FleetSettings>,
    /// `[analysis]` (or `[fleet]`'s Prometheus): where guards' checks are asked.
    pub analysis: Option<super::settings::AnalysisSettings>,
    /// `[ofrep] enabled`: the proxy's listeners answer OFREP evaluations.
    pub ofrep: bool,
    /// `[tracing]`: trace context kept or started, spans exported.
    pub tracing: Option<crate::trace::TracingConfig>,
    /// `[[experiments]]`: what they compare, their goals and their counts.
    pub experiments: Arc<[crate::experiments::ExperimentConfig]>,
    /// `flags_from`: where the feature file comes from (watched like the config).
    pub flags_from: Option<super::FlagsFrom>,
    /// What `check` warns of: valid, but surprising (flags headers that can outgrow their
    /// limit, a feature file's constraints that can never hold).
    pub warnings: Arc<[String]>,
    /// Per route, by [`Route::index`]: what judges it and what it mirrors.
    pub extras: Arc<[RouteExtras]>,
}

/// A route's live companions: its guard, its rollout and its mirror.
#[derive(Debug, Clone, Default)]
pub struct RouteExtras {
    pub guard: Option<GuardConfig>,
    pub rollout: Option<RolloutConfig>,
    /// `[routes.mirror]`: a shadow pool that gets a copy of some requests.
    pub mirror: Option<Arc<MirrorConfig>>,
}

impl Deref for Compiled {
    type Target = Table;

    fn deref(&self) -> &Table {
        &self.routing
    }
}

impl DerefMut for Compiled {
    fn deref_mut(&mut self) -> &mut Table {
        &mut self.routing
    }
}

impl Compiled {
    pub fn pool(&self, index: usize) -> &Arc<Pool> {
        &self.pools[index]
    }

    pub fn pool_by_name(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.iter().find(|p| &*p.name == name)
    }

    /// `route`'s `[routes.guard]`.
    pub fn guard(&self, route: &Route) -> Option<&GuardConfig> {
        self.extras.get(route.index)?.guard.as_ref()
    }

    /// Whether any guard has checks (`[[routes.guard.checks]]`).
    pub fn any_checks(&self) -> bool {
        self.extras
            .iter()
            .any(|x| x.guard.as_ref().is_some_and(|g| !g.checks.is_empty()))
    }

    /// `route`'s `[routes.rollout]`.
    pub fn rollout(&self, route: &Route) -> Option<&RolloutConfig> {
        self.extras.get(route.index)?.rollout.as_ref()
    }

    /// `route`'s `[routes.mirror]`.
    pub fn mirror(&self, route: &Route) -> Option<&Arc<MirrorConfig>> {
        self.extras.get(route.index)?.mirror.as_ref()
    }

    /// The `[routes.mirror]` of the route named `route`.
    pub fn mirror_of(&self, route: &str) -> Option<&Arc<MirrorConfig>> {
        self.mirror(self.route_by_name(route)?)
    }
}
