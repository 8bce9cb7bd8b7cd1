//! [`Snapshot`]: one config revision as the proxy runs it, and [`assemble`], the one step that
//! makes one from a compiled config and the snapshot it replaces.

use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::sync::Arc;

use crate::config::{Compiled, LoadError};

/// A compiled config with its metric series, as requests read it. Swapped whole on reload (and
/// on a trip or rollout step, which change routes' effective splits); a request keeps the one
/// it started with. It derefs to its [`Compiled`] config (which derefs to the routing table).
#[derive(Clone)]
pub struct Snapshot {
    pub compiled: Compiled,
    /// Metric series of this snapshot, attached before it is published.
    pub metrics: Option<Arc<crate::metrics::Handles>>,
    /// `[tracing]`'s exporter, attached before it is published (kept across reloads that
    /// leave `[tracing]` as it was).
    pub tracer: Option<Arc<crate::trace::Exporter>>,
}

impl Deref for Snapshot {
    type Target = Compiled;

    fn deref(&self) -> &Compiled {
        &self.compiled
    }
}

impl DerefMut for Snapshot {
    fn deref_mut(&mut self) -> &mut Compiled {
        &mut self.compiled
    }
}

/// Makes the live snapshot of `compiled`, carrying over by name what `previous` had running:
/// each endpoint's state (health, ejection, in-flight requests, idle connections), each
/// mirror's counts (and its current counts while its settings are the same), and each
/// experiment's counts while its arms are the same.
pub fn assemble(mut compiled: Compiled, previous: Option<&Snapshot>) -> Snapshot {
    if let Some(prev) = previous {
        // A compiled config's pools and mirrors are its own until it is assembled.
        for pool in compiled.pools.iter_mut() {
            let Some(old) = prev.pool_by_name(&pool.name) else {
                continue;
            };
            let Some(pool) = Arc::get_mut(pool) else { continue };
            for e in pool.endpoints.iter_mut() {
                if let Some(o) = old.endpoints.iter().find(|o| o.address == e.address) {
                    *e = o.clone();
                }
            }
        }
        let names: Vec<Arc<str>> = compiled.pools.iter().map(|p| p.name.clone()).collect();
        let routes = &compiled.routing.routes;
        let extras = Arc::get_mut(&mut compiled.extras).map_or(&mut [][..], |x| x);
        for (r, x) in routes.iter().zip(extras.iter_mut()) {
            let old = prev.route_by_name(&r.name).and_then(|o| prev.mirror(o));
            if let (Some(m), Some(old)) = (x.mirror.as_mut().and_then(Arc::get_mut), old) {
                m.stats = old.stats.clone();
                let same = m.pool == old.pool
                    && m.compare == old.compare
                    && m.ignore_text == old.ignore_text
                    && m.methods == old.methods
                    && prev.pools[old.pool].name == names[m.pool];
                if same {
                    m.current = old.current.clone();
                }
            }
        }
        compiled.extras = extras.into();
        let mut experiments = compiled.experiments.to_vec();
        for e in experiments.iter_mut() {
            if let Some(old) = prev
                .experiments
                .iter()
                .find(|x| x.name == e.name && x.arms == e.arms)
            {
                e.results = old.results.clone();
            }
        }
        compiled.experiments = experiments.into();
    }
    Snapshot {
        compiled,
        metrics: None,
        tracer: None,
    }
}

/// Reads, compiles and assembles the config at `path` (see [`crate::config::load`]).
pub fn load(path: &Path, previous: Option<&Snapshot>) -> Result<Snapshot, LoadError> {
    Ok(assemble(crate::config::load(path)?, previous))
}

/// [`load`] from text already read; `path` names the file in errors and anchors its relative
/// paths.
pub fn load_str(src: &str, path: &Path, previous: Option<&Snapshot>) -> Result<Snapshot, LoadError> {
    Ok(assemble(crate::config::load_str(src, path)?, previous))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(endpoints: &str, arms: &str) -> String {
        format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\n[pools.blue]\nendpoints = [{endpoints}]\n[pools.shadow]\nendpoints = [\"127.0.0.1:9\"]\n\
             [[routes]]\nname = \"web\"\nsplit = {{ blue = 1 }}\n[routes.mirror]\npool = \"shadow\"\n\
             [[flags]]\nname = \"f\"\nvariants = {{ {arms} }}\n\
             [[experiments]]\nname = \"e\"\nflag = \"f\"\ngoal = {{ path_prefix = \"/done\" }}\n"
        )
    }

    #[test]
    fn assembling_carries_endpoints_mirror_counts_and_experiment_counts_by_name() {
        let path = Path::new("t.toml");
        let first = load_str(&text("\"127.0.0.1:1\"", "a = 50, b = 50"), path, None).unwrap();
        let second = load_str(
            &text("\"127.0.0.1:1\", \"127.0.0.1:2\"", "a = 50, b = 50"),
            path,
            Some(&first),
        )
        .unwrap();
        let (old, new) = (&first.pools[0].endpoints, &second.pools[0].endpoints);
        assert!(Arc::ptr_eq(&old[0], &new[0]), "the kept endpoint keeps its state");
        assert_eq!(&*new[1].address, "127.0.0.1:2");
        let mirror = |s: &Snapshot| s.mirror(&s.routes[0]).unwrap().stats.clone();
        assert!(Arc::ptr_eq(&mirror(&first), &mirror(&second)));
        assert!(Arc::ptr_eq(
            &first.experiments[0].results,
            &second.experiments[0].results
        ));
        // Other arms: the experiment starts again.
        let third = load_str(&text("\"127.0.0.1:1\"", "a = 50, c = 50"), path, Some(&second)).unwrap();
        assert!(!Arc::ptr_eq(
            &second.experiments[0].results,
            &third.experiments[0].results
        ));
        // Without a previous snapshot, nothing is carried.
        let fresh = load_str(&text("\"127.0.0.1:1\"", "a = 50, b = 50"), path, None).unwrap();
        assert!(!Arc::ptr_eq(
            &first.pools[0].endpoints[0],
            &fresh.pools[0].endpoints[0]
        ));
    }
}
