//! A sliding window of outcomes for one (route, pool): a ring of time buckets, each with
//! request and error counts and a latency histogram. Nothing is averaged away (no EWMA): a
//! burst counts in full for as long as its buckets are in the window.

use std::time::Duration;

use tokio::time::Instant;

/// Buckets per window: a window of 30 s moves in 1.5 s steps.
const SLOTS: usize = 20;

/// Upper bounds of the latency histogram, in milliseconds; the last bucket is unbounded.
const LATENCY_MS: [u64; 22] = [
    1, 2, 5, 10, 20, 50, 100, 150, 200, 300, 400, 500, 600, 800, 1000, 1500, 2000, 3000, 5000, 10_000,
    30_000, 60_000,
];

#[derive(Clone, Copy, Default)]
struct Slot {
    /// Which bucket of time this slot holds (time since the window's epoch / width).
    index: u64,
    requests: u64,
    errors: u64,
    latency: [u32; LATENCY_MS.len() + 1],
}

/// The window of one (route, pool).
#[derive(Clone)]
pub struct Window {
    length: Duration,
    width: Duration,
    epoch: Instant,
    slots: [Slot; SLOTS],
}

/// What a window holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Figures {
    pub requests: u64,
    pub errors: u64,
    /// The 99th percentile latency (the upper bound of its histogram bucket); `None` with no
    /// requests.
    #[serde(serialize_with = "ser_ms")]
    pub p99: Option<Duration>,
}

fn ser_ms<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&(d.as_secs_f64() * 1000.0)),
        None => s.serialize_none(),
    }
}

impl Figures {
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

impl Window {
    pub fn new(length: Duration, now: Instant) -> Window {
        let width = (length / SLOTS as u32).max(Duration::from_millis(1));
        Window {
            length,
            width,
            epoch: now,
            slots: [Slot::default(); SLOTS],
        }
    }

    pub fn length(&self) -> Duration {
        self.length
    }

    fn index(&self, at: Instant) -> u64 {
        (at.saturating_duration_since(self.epoch).as_nanos() / self.width.as_nanos()) as u64
    }

    /// Records one outcome at time `at`.
    pub fn record(&mut self, at: Instant, error: bool, latency: Duration) {
        let index = self.index(at);
        let slot = &mut self.slots[(index % SLOTS as u64) as usize];
        if slot.index != index || slot.requests == 0 {
            *slot = Slot {
                index,
                ..Slot::default()
            };
        }
        slot.requests += 1;
        slot.errors += error as u64;
        let ms = latency.as_millis() as u64;
        let b = LATENCY_MS
            .iter()
            .position(|&ub| ms <= ub)
            .unwrap_or(LATENCY_MS.len());
        slot.latency[b] += 1;
    }

    /// The figures over the last window length before `now`.
    pub fn figures(&self, now: Instant) -> Figures {
        let current = self.index(now);
        let oldest = current.saturating_sub(SLOTS as u64 - 1);
        let mut f = Figures::default();
        let mut hist = [0u64; LATENCY_MS.len() + 1];
        for s in &self.slots {
            if s.requests > 0 && s.index >= oldest && s.index <= current {
                f.requests += s.requests;
                f.errors += s.errors;
                for (h, &c) in hist.iter_mut().zip(&s.latency) {
                    *h += c as u64;
                }
            }
        }
        if f.requests > 0 {
            let rank = (f.requests * 99).div_ceil(100);
            let mut seen = 0;
            for (i, &c) in hist.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    let ms = LATENCY_MS.get(i).copied().unwrap_or(u64::MAX / 2);
                    f.p99 = Some(Duration::from_millis(ms));
                    break;
                }
            }
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn outcomes_leave_the_window_after_its_length() {
        let mut w = Window::new(Duration::from_secs(10), Instant::now());
        for i in 0..10 {
            w.record(Instant::now(), i % 2 == 0, Duration::from_millis(5));
        }
        let f = w.figures(Instant::now());
        assert_eq!((f.requests, f.errors), (10, 5));
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
        assert_eq!(w.figures(Instant::now()), Figures::default());
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
    async fn p99_is_the_bucket_bound_of_the_99th_percentile() {
        let mut w = Window::new(Duration::from_secs(30), Instant::now());
        for _ in 0..98 {
            w.record(Instant::now(), false, Duration::from_millis(8));
        }
        assert_eq!(w.figures(Instant::now()).p99, Some(Duration::from_millis(10)));
        for _ in 0..2 {
            w.record(Instant::now(), false, Duration::from_millis(1900));
        }
        assert_eq!(w.figures(Instant::now()).p99, Some(Duration::from_millis(2000)));
    }
}
