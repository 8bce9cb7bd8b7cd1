//! The dashboard's short memory: every [`INTERVAL`], each route's pools' requests, errors and
//! latency percentiles over that interval, kept for [`KEEP`] in memory.
//!
//! The figures come from the metrics' own counters and duration histogram (the percentiles
//! interpolated within its buckets as Prometheus's `histogram_quantile` does), so the dashboard
//! and a Grafana panel on the same series agree. Only (route, pool) pairs that had requests get
//! a series, only intervals with requests are stored, and at most [`MAX_SERIES`] series are
//! kept, so 10,000 idle routes cost nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::metrics::{Reading, DURATION_BOUNDS};
use crate::runtime::state::State;

/// How often the history is sampled.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// How far back it goes.
pub const KEEP: Duration = Duration::from_secs(15 * 60);
/// Samples per series at most.
const LEN: usize = (KEEP.as_secs() / INTERVAL.as_secs()) as usize;
/// Series kept at most; past it, new (route, pool) pairs are not recorded (counted).
pub const MAX_SERIES: usize = 2000;

/// One interval of one (route, pool).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// The interval's end, Unix milliseconds.
    pub t: u64,
    pub requests: u64,
    pub errors: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(Default)]
struct Series {
    last: Reading,
    samples: VecDeque<Sample>,
}

/// The samples of every (route, pool) with traffic in the last [`KEEP`].
#[derive(Default)]
pub struct History {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    series: HashMap<(Arc<str>, Arc<str>), Series>,
    /// Whether a sample was taken yet.
    started: bool,
    /// (route, pool) pairs with requests in the last interval not recorded because
    /// [`MAX_SERIES`] were.
    dropped: u64,
}

/// What `GET /api/history` answers.
#[derive(Debug, Serialize)]
pub struct HistoryView {
    pub interval_s: u64,
    pub keep_s: u64,
    /// Unix milliseconds of the answer.
    pub now: u64,
    pub series: Vec<SeriesView>,
    pub series_dropped: u64,
}

#[derive(Debug, Serialize)]
pub struct SeriesView {
    pub route: String,
    pub pool: String,
    /// Oldest first; intervals without requests are absent.
    pub samples: Vec<Sample>,
}

/// The `q` quantile (0..1), in milliseconds, of the requests counted between two cumulative
/// bucket readings; `None` without requests. Linear within a bucket, as `histogram_quantile`;
/// in the +Inf bucket, the largest bound.
pub fn quantile_ms(before: &[u64], after: &[u64], q: f64) -> Option<f64> {
    let delta = |i: usize| {
        after
            .get(i)
            .copied()
            .unwrap_or(0)
            .saturating_sub(before.get(i).copied().unwrap_or(0))
    };
    let total = delta(DURATION_BOUNDS.len());
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    let mut lower = 0.0;
    for (i, &upper) in DURATION_BOUNDS.iter().enumerate() {
        let cumulative = delta(i);
        if cumulative as f64 >= rank {
            let inside = cumulative - below;
            let within = if inside == 0 {
                1.0
            } else {
                (rank - below as f64) / inside as f64
            };
            return Some((lower + (upper - lower) * within) * 1000.0);
        }
        below = cumulative;
        lower = upper;
    }
    Some(DURATION_BOUNDS[DURATION_BOUNDS.len() - 1] * 1000.0)
}

impl History {
    /// Reads every route's counters from `state`'s live snapshot and records the interval
    /// since the last reading, ending at `now`.
    pub fn sample(&self, state: &State, now: SystemTime) {
        let snap = state.snapshot.load();
        let Some(handles) = snap.metrics.as_deref() else {
            return;
        };
        let t = crate::clock::unix_ms_of(now);
        let oldest = t.saturating_sub(KEEP.as_millis() as u64);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let inner = &mut *inner;
        let first = !inner.started;
        inner.started = true;
        inner.dropped = 0;
        for (i, route) in snap.routes.iter().enumerate() {
            let readings = handles.readings(i, |pool, requests| {
                let key = (route.name.clone(), snap.pools[pool].name.clone());
                match inner.series.get(&key) {
                    Some(s) => s.last.requests != requests,
                    None => requests > 0,
                }
            });
            for (pool, reading) in readings {
                let key = (route.name.clone(), snap.pools[pool].name.clone());
                if !inner.series.contains_key(&key) {
                    if reading.requests == 0 {
                        // Never had a request: nothing to keep.
                        continue;
                    }
                    if inner.series.len() >= MAX_SERIES {
                        inner.dropped += 1;
                        continue;
                    }
                    // A pair first seen now: its counters started at zero since the last
                    // sample, except on the first sample, whose counts are no interval of the
                    // history. (Entries stay for pairs that leave the config, so one that
                    // comes back counts from where it was.)
                    let last = if first {
                        reading.clone()
                    } else {
                        Reading::default()
                    };
                    inner.series.insert(
                        key.clone(),
                        Series {
                            last,
                            samples: VecDeque::new(),
                        },
                    );
                }
                let Some(series) = inner.series.get_mut(&key) else {
                    continue;
                };
                if reading.requests == series.last.requests {
                    continue;
                }
                // Counters only go up; if one went down, start afresh from it.
                if reading.requests > series.last.requests && reading.errors >= series.last.errors {
                    if series.samples.len() == LEN {
                        series.samples.pop_front();
                    }
                    series.samples.push_back(Sample {
                        t,
                        requests: reading.requests - series.last.requests,
                        errors: reading.errors - series.last.errors,
                        p50_ms: quantile_ms(&series.last.buckets, &reading.buckets, 0.5),
                        p99_ms: quantile_ms(&series.last.buckets, &reading.buckets, 0.99),
                    });
                }
                series.last = reading;
            }
        }
        for s in inner.series.values_mut() {
            while s.samples.front().is_some_and(|x| x.t < oldest) {
                s.samples.pop_front();
            }
        }
    }

    /// The samples newer than `since` (Unix ms), by route and pool, in the snapshot's order.
    /// With `only`, the series of those routes alone.
    pub fn view(
        &self,
        state: &State,
        since: u64,
        only: Option<&std::collections::HashSet<&str>>,
    ) -> HistoryView {
        let snap = state.snapshot.load();
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut series = Vec::new();
        for route in snap
            .routes
            .iter()
            .filter(|r| only.is_none_or(|o| o.contains(&*r.name)))
        {
            for (p, _) in route.split.weights() {
                let pool = &snap.pools[p].name;
                if let Some(s) = inner.series.get(&(route.name.clone(), pool.clone())) {
                    series.push(SeriesView {
                        route: route.name.to_string(),
                        pool: pool.to_string(),
                        samples: s.samples.iter().filter(|x| x.t > since).copied().collect(),
                    });
                }
            }
        }
        HistoryView {
            interval_s: INTERVAL.as_secs(),
            keep_s: KEEP.as_secs(),
            now: crate::clock::unix_ms_of(SystemTime::now()),
            series,
            series_dropped: inner.dropped,
        }
    }
}

/// Samples every [`INTERVAL`] until the state is dropped.
pub async fn run(state: Weak<State>, history: Arc<History>) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(state) = state.upgrade() else {
            return;
        };
        history.sample(&state, SystemTime::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cumulative buckets for `counts` requests in each bucket (then +Inf).
    fn cumulative(counts: &[u64]) -> Vec<u64> {
        let mut sum = 0;
        let mut v: Vec<u64> = counts
            .iter()
            .map(|c| {
                sum += c;
                sum
            })
            .collect();
        v.resize(DURATION_BOUNDS.len() + 1, sum);
        v
    }

    proptest::proptest! {
        /// For any counts: the quantile lies in the bucket that holds its rank (by counting
        /// requests one by one), and a higher quantile is never lower.
        #[test]
        fn quantiles_fall_in_the_bucket_that_holds_their_rank(
            counts in proptest::collection::vec(0u64..50, DURATION_BOUNDS.len() + 1),
            q in 0.01f64..1.0,
        ) {
            let zero = vec![0; DURATION_BOUNDS.len() + 1];
            let after = cumulative(&counts);
            let total: u64 = counts.iter().sum();
            let got = quantile_ms(&zero, &after, q);
            if total == 0 {
                proptest::prop_assert_eq!(got, None);
                return Ok(());
            }
            let got = got.unwrap();
            // The bucket of the request at rank ceil(q * total).
            let rank = ((q * total as f64).ceil() as u64).max(1);
            let mut seen = 0;
            let bucket = counts.iter().position(|&c| { seen += c; seen >= rank }).unwrap();
            let lower = if bucket == 0 { 0.0 } else { DURATION_BOUNDS[bucket - 1] * 1000.0 };
            let upper = DURATION_BOUNDS.get(bucket).map_or(DURATION_BOUNDS[DURATION_BOUNDS.len() - 1] * 1000.0, |b| b * 1000.0);
            proptest::prop_assert!(got >= lower - 1e-9 && got <= upper + 1e-9, "{got} not in [{lower}, {upper}]");
            let higher = quantile_ms(&zero, &after, (q + 0.2).min(1.0)).unwrap();
            proptest::prop_assert!(higher >= got - 1e-9);
        }
    }

    #[test]
    fn quantiles_interpolate_within_buckets_like_histogram_quantile() {
        let zero = cumulative(&[]);
        assert_eq!(quantile_ms(&zero, &zero, 0.5), None);
        // 100 requests in (1ms, 2.5ms]: the median is halfway, 1.75 ms; p99 at 99%, 2.485.
        let after = cumulative(&[0, 0, 0, 0, 100]);
        assert!((quantile_ms(&zero, &after, 0.5).unwrap() - 1.75).abs() < 1e-9);
        assert!((quantile_ms(&zero, &after, 0.99).unwrap() - 2.485).abs() < 1e-9);
        // Only the difference counts: 100 old fast requests, then 10 slow ones in (250, 500].
        let before = cumulative(&[100]);
        let mut later = cumulative(&[100, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10]);
        assert!((quantile_ms(&before, &later, 0.5).unwrap() - 375.0).abs() < 1e-9);
        // Past the last bound: the last bound.
        *later.last_mut().unwrap() += 1000;
        assert_eq!(quantile_ms(&before, &later, 0.99), Some(30_000.0));
    }
}
