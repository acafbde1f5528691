//! The arithmetic of the checkpoint interval, apart from where its inputs come from: the
//! eviction rate from a count, its exact Poisson confidence interval, the expected
//! goodput at an interval, and the interval that maximises it (with Young's and Daly's
//! closed forms beside it for comparison).

use serde::Serialize;

/// A rate (events per second of running) with its confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rate {
    pub events: u64,
    pub exposure_seconds: f64,
    pub per_second: f64,
    pub low: f64,
    pub high: f64,
}

/// P(Gamma(n, 1) <= x) for a whole n >= 1, which is the chance of at least n events of a
/// Poisson process of mean x: 1 - sum_{i<n} e^-x x^i / i!. The terms are summed in log
/// space so that neither e^-x nor x^i over- or underflows for large x and n.
fn gamma_cdf(n: u64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    let lx = x.ln();
    let mut log_term = -x;
    let mut sum = 0.0;
    for i in 0..n {
        if i > 0 {
            log_term += lx - (i as f64).ln();
        }
        sum += log_term.exp();
    }
    (1.0 - sum).clamp(0.0, 1.0)
}

/// The p-quantile of Gamma(n, 1), which is half the p-quantile of chi-square with 2n
/// degrees of freedom (the form the Garwood interval is usually written in).
fn gamma_quantile(n: u64, p: f64) -> f64 {
    let mut hi = (n as f64).max(1.0);
    while gamma_cdf(n, hi) < p {
        hi *= 2.0;
    }
    let mut lo = 0.0;
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if gamma_cdf(n, mid) < p {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo <= 1e-12 * hi {
            break;
        }
    }
    0.5 * (lo + hi)
}

/// The rate of a Poisson process that gave `k` events in `exposure` seconds, with the
/// exact (Garwood) two-sided interval at `confidence`: from chi2(a/2, 2k)/2T to
/// chi2(1-a/2, 2k+2)/2T. With no event the low end is 0 and the high end still finite:
/// seeing nothing in a short time does not prove the rate is small.
pub fn poisson_rate(k: u64, exposure: f64, confidence: f64) -> Rate {
    let alpha = (1.0 - confidence).clamp(1e-9, 1.0);
    let t = exposure.max(1e-9);
    let low = if k == 0 { 0.0 } else { gamma_quantile(k, alpha / 2.0) / t };
    let high = gamma_quantile(k + 1, 1.0 - alpha / 2.0) / t;
    Rate { events: k, exposure_seconds: exposure, per_second: k as f64 / t, low, high }
}

/// What a checkpoint and an eviction cost, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Costs {
    /// Training stops this long for each checkpoint (the trainer's save and baton's capture).
    pub checkpoint: f64,
    /// From the start of an attempt until training resumes (baton's restore).
    pub restart: f64,
    /// After a commit, until the checkpoint is durable: an unwarned kill in that window
    /// loses the previous interval too.
    pub upload: f64,
    /// What an eviction the trainer saved on costs: the drain and flush after the signal.
    pub saved_eviction: f64,
}

/// Young (1974): the interval sqrt(2 C M) for checkpoint cost C and mean time between
/// failures M, first order in C/M.
pub fn young(c: f64, m: f64) -> f64 {
    (2.0 * c * m).sqrt()
}

/// Daly (2006), the higher-order estimate: sqrt(2CM) (1 + sqrt(C/2M)/3 + C/18M) - C for
/// C < 2M, else M.
pub fn daly(c: f64, m: f64) -> f64 {
    if c >= 2.0 * m {
        return m;
    }
    let x = c / (2.0 * m);
    young(c, m) * (1.0 + x.sqrt() / 3.0 + x / 9.0) - c
}

/// Expected goodput (training time over slot time) when checkpointing every `tau` seconds
/// of training, with `lossy` evictions per second that lose the work since the last
/// durable checkpoint (hard kills, and soft ones the trainer did not save on) and `saved`
/// evictions per second that cost only their drain, flush and restart.
///
/// The lossy part is Daly's exact model for exponential failures, which may also strike
/// during a checkpoint or a restart: one interval of `tau` training and its checkpoint
/// take M e^(R/M) (e^((tau+C)/M) - 1) of wall time on average, M = 1/lossy. The upload
/// window is added to the restart: to first order a kill loses it on top of half an
/// interval. Saved evictions then take their share of the time off the top.
pub fn goodput(tau: f64, costs: &Costs, lossy: f64, saved: f64) -> f64 {
    if tau <= 0.0 {
        return 0.0;
    }
    let c = costs.checkpoint.max(0.0);
    let base = if lossy > 0.0 {
        let m = 1.0 / lossy;
        let r = (costs.restart + costs.upload).max(0.0);
        let wall = m * (r / m).exp() * ((tau + c) / m).exp_m1();
        if wall.is_finite() && wall > 0.0 {
            tau / wall
        } else {
            0.0
        }
    } else {
        tau / (tau + c)
    };
    base * (1.0 - saved * (costs.saved_eviction + costs.restart).max(0.0)).max(0.0)
}

/// The interval that maximises `goodput`, by golden-section search over log(tau) (the
/// goodput is unimodal in tau). None when no eviction loses work: then the longer the
/// interval, the better.
pub fn best_interval(costs: &Costs, lossy: f64, saved: f64) -> Option<f64> {
    if lossy <= 0.0 || !lossy.is_finite() {
        return None;
    }
    let m = 1.0 / lossy;
    // A checkpoint that costs nothing would have an optimum at zero; a millisecond is
    // as often as any trainer would checkpoint.
    let (mut a, mut b) = (1e-3f64.ln(), (20.0 * m).max(1e-2).ln());
    let g = |ln_tau: f64| goodput(ln_tau.exp(), costs, lossy, saved);
    let phi = (5f64.sqrt() - 1.0) / 2.0;
    let (mut c, mut d) = (b - phi * (b - a), a + phi * (b - a));
    let (mut gc, mut gd) = (g(c), g(d));
    for _ in 0..200 {
        if gc >= gd {
            b = d;
            d = c;
            gd = gc;
            c = b - phi * (b - a);
            gc = g(c);
        } else {
            a = c;
            c = d;
            gc = gd;
            d = a + phi * (b - a);
            gd = g(d);
        }
        if b - a < 1e-9 {
            break;
        }
    }
    Some((0.5 * (a + b)).exp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::schedule::Rng;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs()
    }

    #[test]
    fn poisson_interval_matches_chi_square_tables() {
        // chi2 quantiles from tables: chi2(0.025, 10) = 3.247, chi2(0.975, 12) = 23.337,
        // chi2(0.975, 2) = 7.378, chi2(0.05, 2) = 0.1026, chi2(0.95, 4) = 9.488.
        let r = poisson_rate(5, 1.0, 0.95);
        assert!(close(r.low, 3.247 / 2.0, 1e-3), "{r:?}");
        assert!(close(r.high, 23.337 / 2.0, 1e-3), "{r:?}");
        assert_eq!(r.per_second, 5.0);
        let r = poisson_rate(0, 10.0, 0.95);
        assert_eq!(r.low, 0.0);
        assert!(close(r.high, 7.378 / 2.0 / 10.0, 1e-3), "{r:?}");
        let r = poisson_rate(1, 2.0, 0.90);
        assert!(close(r.low, 0.1026 / 4.0, 1e-3) && close(r.high, 9.488 / 4.0, 1e-3), "{r:?}");
        // Many events: the interval narrows around k/T (normal approximation +-1.96 sqrt k).
        let r = poisson_rate(10_000, 100.0, 0.95);
        assert!(close(r.low, 100.0 - 1.96, 2e-3) && close(r.high, 100.0 + 1.96, 2e-3), "{r:?}");
        // More confidence, a wider interval; the same count over more time, a lower rate.
        let (a, b) = (poisson_rate(3, 1.0, 0.8), poisson_rate(3, 1.0, 0.99));
        assert!(b.low < a.low && b.high > a.high);
        assert!(poisson_rate(3, 2.0, 0.9).high < poisson_rate(3, 1.0, 0.9).high);
    }

    #[test]
    fn young_and_daly_agree_for_cheap_checkpoints_and_daly_caps_at_m() {
        assert!(close(young(10.0, 3600.0), 268.33, 1e-4));
        let d = daly(10.0, 3600.0);
        assert!(d < young(10.0, 3600.0) && close(d, 261.7, 1e-3), "{d}");
        assert_eq!(daly(100.0, 10.0), 10.0);
    }

    #[test]
    fn the_best_interval_of_the_exact_model_is_near_daly_when_c_is_small() {
        let costs = Costs { checkpoint: 10.0, restart: 0.0, upload: 0.0, saved_eviction: 0.0 };
        let best = best_interval(&costs, 1.0 / 3600.0, 0.0).unwrap();
        assert!(close(best, daly(10.0, 3600.0), 0.01), "{best} vs Daly {}", daly(10.0, 3600.0));
        // It is a maximum: nudging it either way loses goodput.
        let g = |t| goodput(t, &costs, 1.0 / 3600.0, 0.0);
        assert!(g(best) > g(best * 0.8) && g(best) > g(best * 1.25));
        // First-order goodput at the optimum: 1 - sqrt(2C/M).
        assert!(close(g(best), 1.0 - (20.0f64 / 3600.0).sqrt(), 0.01), "{}", g(best));
        // Restart and upload costs do not move the optimum, saved evictions neither;
        // with no lossy eviction there is none.
        let slow = Costs { restart: 60.0, upload: 30.0, saved_eviction: 20.0, ..costs };
        assert!(close(best_interval(&slow, 1.0 / 3600.0, 1.0 / 600.0).unwrap(), best, 0.01));
        assert!(goodput(best, &slow, 1.0 / 3600.0, 1.0 / 600.0) < g(best));
        assert_eq!(best_interval(&costs, 0.0, 1.0), None);
        // When checkpoints are dear relative to the time between evictions, the exact
        // optimum departs from Young's first-order one, and beats it.
        let dear = Costs { checkpoint: 600.0, ..costs };
        let b = best_interval(&dear, 1.0 / 1800.0, 0.0).unwrap();
        let y = young(600.0, 1800.0);
        assert!(goodput(b, &dear, 1.0 / 1800.0, 0.0) > goodput(y, &dear, 1.0 / 1800.0, 0.0) + 0.005, "{b} vs Young {y}");
    }

    /// The goodput formula against a direct simulation of the process it models:
    /// exponential lossy failures that strike work, checkpoint and restart alike, with a
    /// restart and the upload window lost after each.
    #[test]
    fn goodput_matches_a_monte_carlo_replay() {
        let costs = Costs { checkpoint: 2.0, restart: 3.0, upload: 0.0, saved_eviction: 0.0 };
        let (m, tau) = (60.0, 12.0);
        let mut rng = Rng::new(5);
        let (mut wall, mut useful) = (0.0, 0.0);
        let mut next_failure = rng.exponential(m);
        let mut restarting = false;
        while useful < 200_000.0 {
            // One restart (after a failure) or one interval and its checkpoint.
            let need = if restarting { costs.restart } else { tau + costs.checkpoint };
            if next_failure < need {
                wall += next_failure;
                restarting = true;
                next_failure = rng.exponential(m);
                continue;
            }
            wall += need;
            next_failure -= need;
            if !restarting {
                useful += tau;
            }
            restarting = false;
        }
        let measured = useful / wall;
        let model = goodput(tau, &costs, 1.0 / m, 0.0);
        assert!(close(model, measured, 0.01), "model {model}, replay {measured}");
    }
}
