//! The statistics of an experiment's results: each arm's conversion rate with a 95% Wilson
//! score interval, the difference to the first arm with a two-sided two-proportion z-test
//! (pooled variance), and a sample-ratio-mismatch check: Pearson's chi-square goodness of fit
//! of the exposed users against the arms' weights, flagged below p = 0.001.

/// The SRM threshold: a mismatch this unlikely by chance is a broken assignment.
pub const SRM_P: f64 = 0.001;
const Z95: f64 = 1.959_963_984_540_054;

/// The complementary error function, as Q(1/2, x²) (the regularized upper incomplete gamma
/// function below).
pub fn erfc(x: f64) -> f64 {
    if x < 0.0 {
        return 2.0 - erfc(-x);
    }
    // erfc(x) = Q(1/2, x²), the regularized upper incomplete gamma function.
    gamma_q(0.5, x * x)
}

/// The standard normal's upper tail, P(Z > z).
pub fn normal_sf(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

fn ln_gamma(x: f64) -> f64 {
    // Lanczos (g = 7, n = 9).
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + 7.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The regularized upper incomplete gamma function Q(a, x) (Numerical Recipes' `gammq`: a
/// series below a + 1, a continued fraction above).
pub fn gamma_q(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let gln = ln_gamma(a);
    if x < a + 1.0 {
        let (mut ap, mut sum) = (a, 1.0 / a);
        let mut del = sum;
        for _ in 0..1000 {
            ap += 1.0;
            del *= x / ap;
            sum += del;
            if del.abs() < sum.abs() * 1e-16 {
                break;
            }
        }
        1.0 - sum * (-x + a * x.ln() - gln).exp()
    } else {
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..1000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let del = d * c;
            h *= del;
            if (del - 1.0).abs() < 1e-16 {
                break;
            }
        }
        (-x + a * x.ln() - gln).exp() * h
    }
}

/// The 95% Wilson score interval of `converted` out of `exposed`.
pub fn wilson(converted: f64, exposed: f64) -> (f64, f64) {
    if exposed <= 0.0 {
        return (0.0, 1.0);
    }
    let p = (converted / exposed).min(1.0);
    let z2 = Z95 * Z95;
    let d = 1.0 + z2 / exposed;
    let centre = (p + z2 / (2.0 * exposed)) / d;
    let half = Z95 * (p * (1.0 - p) / exposed + z2 / (4.0 * exposed * exposed)).sqrt() / d;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// The two-sided p-value of the two-proportion z-test (pooled) of arm b against arm a, and z.
pub fn two_proportion(ca: f64, na: f64, cb: f64, nb: f64) -> Option<(f64, f64)> {
    if na <= 0.0 || nb <= 0.0 {
        return None;
    }
    let p = (ca + cb) / (na + nb);
    let se = (p * (1.0 - p) * (1.0 / na + 1.0 / nb)).sqrt();
    if se <= 0.0 {
        return None;
    }
    let z = (cb / nb - ca / na) / se;
    Some((z, (2.0 * normal_sf(z.abs())).min(1.0)))
}

/// Pearson's chi-square of `observed` against `weights` (expected shares), and its p-value
/// with `k - 1` degrees of freedom.
pub fn chi_square(observed: &[f64], weights: &[f64]) -> Option<(f64, f64)> {
    let total: f64 = observed.iter().sum();
    let wsum: f64 = weights.iter().sum();
    if observed.len() < 2 || total <= 0.0 || wsum <= 0.0 || observed.len() != weights.len() {
        return None;
    }
    let mut chi = 0.0;
    for (o, w) in observed.iter().zip(weights) {
        let e = total * w / wsum;
        if e <= 0.0 {
            return None;
        }
        chi += (o - e) * (o - e) / e;
    }
    let df = (observed.len() - 1) as f64;
    Some((chi, gamma_q(df / 2.0, chi / 2.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values from scipy 1.17.1 (`scipy.stats.norm.sf`, `chisquare`) and the
    /// textbook Wilson formula, on the same counts.
    #[test]
    fn agrees_with_scipy() {
        let close = |a: f64, b: f64, rel: f64| (a - b).abs() <= rel * b.abs().max(1e-300);
        let (z, p) = two_proportion(1000.0, 10000.0, 1200.0, 10000.0).unwrap();
        assert!(close(z, 4.519846147055684, 1e-12), "{z}");
        assert!(close(p, 6.188458781738781e-06, 1e-6), "{p}");
        let (z, p) = two_proportion(1003.0, 9987.0, 1189.0, 10013.0).unwrap();
        assert!(
            close(z, 4.1456762916650485, 1e-12) && close(p, 3.3881220472258136e-05, 1e-6),
            "{z} {p}"
        );
        let (lo, hi) = wilson(1000.0, 10000.0);
        assert!(
            close(lo, 0.09427283017063046, 1e-9) && close(hi, 0.10603436852591083, 1e-9),
            "{lo} {hi}"
        );
        let (chi, p) = chi_square(&[6000.0, 4000.0], &[1.0, 1.0]).unwrap();
        assert!(
            close(chi, 400.0, 1e-12) && close(p, 5.507248237212379e-89, 1e-6),
            "{chi} {p}"
        );
        let (chi, p) = chi_square(&[5030.0, 4970.0], &[50.0, 50.0]).unwrap();
        assert!(
            close(chi, 0.36, 1e-12) && close(p, 0.5485062355001471, 1e-9),
            "{chi} {p}"
        );
        let (chi, p) = chi_square(&[3400.0, 3300.0, 3300.0], &[1.0, 1.0, 1.0]).unwrap();
        assert!(
            close(chi, 2.0, 1e-12) && close(p, 0.36787944117144245, 1e-9),
            "{chi} {p}"
        );
        assert!(close(normal_sf(1.959963984540054), 0.025, 1e-9));
    }
}
