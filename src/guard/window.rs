//! A sliding window of outcomes for one (route, pool), in two resolutions:
//!
//! - the configured window, a ring of [`SLOTS`] time buckets, each with request and error
//!   counts and a latency histogram;
//! - a short recent window, the last [`RECENT`] buckets of [`RECENT_WIDTH`] each, with request
//!   and error counts, so a pool that turns bad is seen within a second whatever its healthy
//!   history (the configured window's rate would cross a limit only once enough of its history
//!   had turned), as multi-window burn-rate alerts do.
//!
//! Nothing is averaged away (no EWMA): a burst counts in full for as long as its buckets are in
//! the window.
//!
//! Latencies go into log-linear buckets 2% apart from 50 µs to 5 minutes; a percentile is read
//! as its bucket's geometric middle, so it is within 1% of the true value (`cargo test`
//! checks it on random latencies).

use std::time::Duration;

use tokio::time::Instant;

/// Buckets per configured window: a window of 30 s moves in 1.5 s steps.
const SLOTS: usize = 20;
/// Buckets of the recent window, and their width: the recent window spans 0.8 s.
pub const RECENT: usize = 4;
pub const RECENT_WIDTH: Duration = Duration::from_millis(200);

/// The latency histogram: bucket `i` holds latencies in `[FLOOR·GROWTH^i, FLOOR·GROWTH^(i+1))`.
const FLOOR_NS: f64 = 50_000.0;
const GROWTH: f64 = 1.02;
/// Enough buckets to reach past five minutes.
const BUCKETS: usize = 800;

#[derive(Clone, Default)]
struct Slot {
    /// Which bucket of time this slot holds (time since the window's epoch / width).
    index: u64,
    requests: u64,
    errors: u64,
    /// Latency counts; allocated with the slot's first outcome.
    latency: Option<Box<[u32; BUCKETS]>>,
}

#[derive(Clone, Copy, Default)]
struct Tick {
    index: u64,
    requests: u64,
    errors: u64,
}

/// The window of one (route, pool).
#[derive(Clone)]
pub struct Window {
    length: Duration,
    width: Duration,
    epoch: Instant,
    slots: Vec<Slot>,
    /// The sum of the slots in the window, kept as outcomes come and slots leave, so reading
    /// the figures costs one pass over the histogram, not one per slot.
    total: Total,
    recent: [Tick; RECENT],
}

#[derive(Clone)]
struct Total {
    requests: u64,
    errors: u64,
    latency: Box<[u64; BUCKETS]>,
}

/// Requests and errors of a stretch of time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub requests: u64,
    pub errors: u64,
}

impl Counts {
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// What a window holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Figures {
    pub requests: u64,
    pub errors: u64,
    /// Latency percentiles over the window; `None` with no requests.
    #[serde(serialize_with = "ser_ms")]
    pub p50: Option<Duration>,
    #[serde(serialize_with = "ser_ms")]
    pub p99: Option<Duration>,
    /// The recent window's buckets, oldest first (the last one still filling).
    #[serde(skip)]
    pub recent: [Counts; RECENT],
    /// The time these figures cover: the window's length, or less when it started later (a
    /// reset, a config change, a restart, or the fleet's range); zero when not known.
    #[serde(skip)]
    pub span: Duration,
}

fn ser_ms<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&((d.as_secs_f64() * 100_000.0).round() / 100.0)),
        None => s.serialize_none(),
    }
}

impl Figures {
    pub fn error_rate(&self) -> f64 {
        self.counts().error_rate()
    }

    pub fn counts(&self) -> Counts {
        Counts {
            requests: self.requests,
            errors: self.errors,
        }
    }

    /// The recent window's requests and errors together.
    pub fn recent_total(&self) -> Counts {
        self.recent.iter().fold(Counts::default(), |a, c| Counts {
            requests: a.requests + c.requests,
            errors: a.errors + c.errors,
        })
    }
}

/// The latency bucket of `latency`.
fn bucket(latency: Duration) -> usize {
    let ns = latency.as_nanos() as f64;
    if ns < FLOOR_NS {
        return 0;
    }
    (((ns / FLOOR_NS).ln() / GROWTH.ln()) as usize).min(BUCKETS - 1)
}

/// The latency a bucket stands for: its geometric middle.
fn bucket_value(i: usize) -> Duration {
    Duration::from_nanos((FLOOR_NS * GROWTH.powf(i as f64 + 0.5)) as u64)
}

impl Window {
    pub fn new(length: Duration, now: Instant) -> Window {
        let width = (length / SLOTS as u32).max(Duration::from_millis(1));
        Window {
            length,
            width,
            epoch: now,
            slots: vec![Slot::default(); SLOTS],
            total: Total {
                requests: 0,
                errors: 0,
                latency: Box::new([0; BUCKETS]),
            },
            recent: [Tick::default(); RECENT],
        }
    }

    pub fn length(&self) -> Duration {
        self.length
    }

    fn index(&self, at: Instant, width: Duration) -> u64 {
        (at.saturating_duration_since(self.epoch).as_nanos() / width.as_nanos()) as u64
    }

    /// Takes the slots that have left the window at `now` out of the total.
    fn expire(&mut self, now: Instant) {
        let oldest = self.index(now, self.width).saturating_sub(SLOTS as u64 - 1);
        let total = &mut self.total;
        for slot in self
            .slots
            .iter_mut()
            .filter(|s| s.requests > 0 && s.index < oldest)
        {
            total.requests -= slot.requests;
            total.errors -= slot.errors;
            if let Some(l) = slot.latency.as_mut() {
                for (t, c) in total.latency.iter_mut().zip(l.iter_mut()) {
                    *t -= u64::from(*c);
                    *c = 0;
                }
            }
            slot.requests = 0;
            slot.errors = 0;
        }
    }

    /// Records one outcome at time `at`.
    pub fn record(&mut self, at: Instant, error: bool, latency: Duration) {
        self.expire(at);
        let index = self.index(at, self.width);
        let slot = &mut self.slots[(index % SLOTS as u64) as usize];
        if slot.requests > 0 && slot.index > index {
            // Older than what the window holds (outcomes out of order): not counted.
            return;
        }
        slot.index = index;
        slot.requests += 1;
        slot.errors += u64::from(error);
        let b = bucket(latency);
        slot.latency.get_or_insert_with(|| Box::new([0; BUCKETS]))[b] += 1;
        self.total.requests += 1;
        self.total.errors += u64::from(error);
        self.total.latency[b] += 1;

        let index = self.index(at, RECENT_WIDTH);
        let tick = &mut self.recent[(index % RECENT as u64) as usize];
        if tick.index != index || tick.requests == 0 {
            *tick = Tick {
                index,
                ..Tick::default()
            };
        }
        tick.requests += 1;
        tick.errors += u64::from(error);
    }

    /// The figures over the last window length before `now`, and the recent window's.
    pub fn figures(&mut self, now: Instant) -> Figures {
        self.expire(now);
        let mut f = Figures {
            requests: self.total.requests,
            errors: self.total.errors,
            span: self.length.min(now.saturating_duration_since(self.epoch)),
            ..Figures::default()
        };
        if f.requests > 0 {
            f.p50 = percentile(&self.total.latency[..], f.requests, 50);
            f.p99 = percentile(&self.total.latency[..], f.requests, 99);
        }
        let now_tick = self.index(now, RECENT_WIDTH);
        for (k, c) in f.recent.iter_mut().enumerate() {
            // Oldest first: k = 0 is RECENT - 1 ticks ago.
            let Some(index) = now_tick.checked_sub((RECENT - 1 - k) as u64) else {
                continue;
            };
            let t = &self.recent[(index % RECENT as u64) as usize];
            if t.index == index {
                *c = Counts {
                    requests: t.requests,
                    errors: t.errors,
                };
            }
        }
        f
    }
}

/// The `pct`th percentile of `total` latencies counted in `hist`.
fn percentile(hist: &[u64], total: u64, pct: u64) -> Option<Duration> {
    let rank = (total * pct).div_ceil(100).max(1);
    let mut seen = 0;
    hist.iter().enumerate().find_map(|(i, &c)| {
        seen += c;
        (seen >= rank).then(|| bucket_value(i))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[tokio::test(start_paused = true)]
    async fn outcomes_leave_the_window_after_its_length() {
        let mut w = Window::new(Duration::from_secs(10), Instant::now());
        for i in 0..10 {
            w.record(Instant::now(), i % 2 == 0, Duration::from_millis(5));
        }
        let f = w.figures(Instant::now());
        assert_eq!((f.requests, f.errors), (10, 5));
        assert_eq!(f.span, Duration::ZERO, "a window just begun covers nothing yet");
        tokio::time::advance(Duration::from_secs(5)).await;
        w.record(Instant::now(), false, Duration::from_millis(5));
        assert_eq!(w.figures(Instant::now()).requests, 11, "still inside");
        tokio::time::advance(Duration::from_millis(5_600)).await;
        let f = w.figures(Instant::now());
        assert_eq!(
            (f.requests, f.errors),
            (1, 0),
            "the first burst has left the window"
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            w.figures(Instant::now()),
            Figures {
                span: Duration::from_secs(10),
                ..Figures::default()
            },
            "a window's figures cover its length at most"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_not_averaged_away() {
        let mut w = Window::new(Duration::from_secs(30), Instant::now());
        for _ in 0..1000 {
            w.record(Instant::now(), false, Duration::from_millis(5));
            tokio::time::advance(Duration::from_millis(20)).await;
        }
        for _ in 0..100 {
            w.record(Instant::now(), true, Duration::from_millis(5));
        }
        let f = w.figures(Instant::now());
        assert_eq!(f.errors, 100);
        assert!((f.error_rate() - 100.0 / 1100.0).abs() < 1e-9);
    }

    #[tokio::test(start_paused = true)]
    async fn the_recent_window_holds_the_last_four_fifths_of_a_second() {
        let mut w = Window::new(Duration::from_secs(30), Instant::now());
        for i in 0..10u32 {
            // 10 requests per 200 ms tick, the i-th tick with i errors.
            for k in 0..10 {
                w.record(Instant::now(), k < i, Duration::from_millis(1));
            }
            tokio::time::advance(RECENT_WIDTH).await;
        }
        tokio::time::advance(Duration::from_millis(1)).await;
        let f = w.figures(Instant::now());
        let recent: Vec<(u64, u64)> = f.recent.iter().map(|c| (c.requests, c.errors)).collect();
        assert_eq!(
            recent,
            [(10, 7), (10, 8), (10, 9), (0, 0)],
            "the current tick is empty"
        );
        assert_eq!(
            f.recent_total(),
            Counts {
                requests: 30,
                errors: 24
            }
        );
        assert_eq!((f.requests, f.errors), (100, 45));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(w.figures(Instant::now()).recent_total(), Counts::default());
    }

    #[tokio::test(start_paused = true)]
    async fn percentiles_are_the_latencies_not_bucket_bounds() {
        let mut w = Window::new(Duration::from_secs(30), Instant::now());
        for _ in 0..98 {
            w.record(Instant::now(), false, Duration::from_millis(8));
        }
        for _ in 0..2 {
            w.record(Instant::now(), false, Duration::from_millis(1900));
        }
        let f = w.figures(Instant::now());
        let near = |d: Option<Duration>, ms: f64| (d.unwrap().as_secs_f64() * 1000.0 / ms - 1.0).abs() < 0.01;
        assert!(near(f.p50, 8.0), "{:?}", f.p50);
        assert!(near(f.p99, 1900.0), "{:?}", f.p99);
        // 620 ms stays 620 ms: below a 700 ms limit (a bucket bound used to make it 800).
        let mut w = Window::new(Duration::from_secs(30), Instant::now());
        for _ in 0..200 {
            w.record(Instant::now(), false, Duration::from_millis(620));
        }
        assert!(near(w.figures(Instant::now()).p99, 620.0));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn percentiles_are_within_one_percent_of_the_true_ones(
            mut latencies in proptest::collection::vec(100u64..200_000_000, 1..400),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
            let _guard = rt.enter();
            let mut w = Window::new(Duration::from_secs(30), Instant::now());
            for &us in &latencies {
                w.record(Instant::now(), false, Duration::from_micros(us));
            }
            let f = w.figures(Instant::now());
            latencies.sort();
            for (pct, got) in [(50, f.p50), (99, f.p99)] {
                let rank = (latencies.len() as u64 * pct).div_ceil(100).max(1) as usize;
                let truth = latencies[rank - 1] as f64;
                let got = got.unwrap().as_secs_f64() * 1e6;
                prop_assert!((got / truth - 1.0).abs() <= 0.01, "p{}: {} for {}", pct, got, truth);
            }
        }
    }
}
