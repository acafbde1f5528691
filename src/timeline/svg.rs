//! The run as a picture: time on x, training progress on y, one coloured band per
//! attempt labelled with its device, eviction marks, restore and flush intervals.

use std::fmt::Write;

use super::{AttemptRow, Point, Totals};

const W: f64 = 960.0;
const H: f64 = 480.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 80.0;
const PALETTE: [&str; 8] = ["#4e79a7", "#59a14f", "#b07aa1", "#edc948", "#76b7b2", "#ff9da7", "#9c755f", "#bab0ac"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Training progress of a checkpoint in epochs: epoch plus the fraction of the epoch its
/// step is at. A checkpoint without an epoch (a final one) counts as the furthest.
fn progress(m: &Point, max_step: u64, furthest: f64) -> f64 {
    match m.epoch {
        Some(e) => e as f64 + m.step.unwrap_or(0) as f64 / (max_step + 1) as f64,
        None => furthest,
    }
}

fn nice_step(span: f64) -> f64 {
    let raw = span / 8.0;
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag)
}

pub fn svg(title: &str, t0: f64, rows: &[AttemptRow], manifests: &[Point], totals: &Totals) -> String {
    let wall = totals.wall_seconds.max(1e-3);
    let max_step = manifests.iter().filter_map(|m| m.step).max().unwrap_or(0);
    let furthest = manifests.iter().filter(|m| m.epoch.is_some()).map(|m| progress(m, max_step, 0.0)).fold(0.0, f64::max);
    let furthest = if furthest == 0.0 { 1.0 } else { furthest };
    let ymax = manifests.iter().map(|m| progress(m, max_step, furthest)).fold(furthest, f64::max).max(1.0);
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let x = |t: f64| LEFT + pw * (t / wall).clamp(0.0, 1.0);
    let y = |p: f64| TOP + ph * (1.0 - p / ymax);
    let mut s = String::new();
    let _ = writeln!(s, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{LEFT}" y="22" font-size="15" font-weight="bold">{}</text>"#, esc(title));
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="40" fill="#444">wall {:.1} s, useful {:.1} s, goodput {:.1}%, {} eviction(s) ({} soft, {} hard), {:.1} s lost per eviction</text>"##,
        totals.wall_seconds,
        totals.useful_seconds,
        totals.goodput * 100.0,
        totals.evictions,
        totals.soft,
        totals.hard,
        totals.work_lost_per_eviction
    );
    // Attempt bands.
    for (i, r) in rows.iter().enumerate() {
        let c = PALETTE[i % PALETTE.len()];
        let (x0, x1) = (x(r.start), x(r.start + r.duration));
        let _ = writeln!(
            s,
            r#"<g class="attempt" data-attempt="{}"><rect x="{x0:.1}" y="{TOP}" width="{:.1}" height="{ph}" fill="{c}" fill-opacity="0.18" stroke="{c}" stroke-opacity="0.6"/><text x="{:.1}" y="{:.1}" fill="{c}" font-weight="bold">#{} {}</text><title>attempt {} on {} ({}): {:.1} s, {}</title></g>"#,
            r.attempt,
            (x1 - x0).max(1.0),
            x0 + 3.0,
            TOP + 14.0 + 14.0 * (i % 2) as f64,
            r.attempt,
            esc(&r.device),
            r.attempt,
            esc(&r.slot),
            esc(&r.device),
            r.duration,
            esc(&r.ending)
        );
        // Restore (blue) and flush (orange) intervals under the plot.
        let strip = TOP + ph + 6.0;
        if r.restore_seconds > 0.0 {
            let _ = writeln!(
                s,
                r##"<rect class="restore" x="{x0:.1}" y="{strip}" width="{:.1}" height="8" fill="#1f77b4"><title>restore {:.2} s</title></rect>"##,
                (x(r.start + r.restore_seconds) - x0).max(1.0),
                r.restore_seconds
            );
        }
        if let Some(ev) = r.evicted_at {
            let xe = x(ev);
            let _ = writeln!(
                s,
                r##"<rect class="flush" x="{xe:.1}" y="{:.1}" width="{:.1}" height="8" fill="#ff7f0e"><title>drain and flush {:.2} s</title></rect>"##,
                strip + 10.0,
                (x1 - xe).max(1.0),
                r.start + r.duration - ev
            );
            let dash = if r.ending.starts_with("hard") { r#" stroke-dasharray="5,3""# } else { "" };
            let _ = writeln!(
                s,
                r##"<g class="eviction"><line x1="{xe:.1}" y1="{TOP}" x2="{xe:.1}" y2="{:.1}" stroke="#d62728" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}" fill="#d62728" font-weight="bold">✕</text><title>{} at {:.1} s, {:.1} s of work lost</title></g>"##,
                TOP + ph,
                xe - 4.0,
                TOP - 2.0,
                esc(&r.ending),
                ev,
                r.work_lost
            );
        }
    }
    // Progress line through the checkpoints, in time order.
    let mut pts: Vec<(f64, f64, u64)> = manifests.iter().map(|m| (m.created - t0, progress(m, max_step, furthest), m.attempt)).collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    if !pts.is_empty() {
        let path: Vec<String> =
            std::iter::once((0.0, 0.0)).chain(pts.iter().map(|p| (p.0, p.1))).map(|(t, p)| format!("{:.1},{:.1}", x(t), y(p))).collect();
        let _ = writeln!(s, r##"<polyline class="progress" points="{}" fill="none" stroke="#333" stroke-width="1.5"/>"##, path.join(" "));
    }
    for (t, p, a) in &pts {
        let idx = rows.iter().position(|r| r.attempt == *a).unwrap_or(0);
        let _ = writeln!(
            s,
            r##"<circle class="checkpoint" cx="{:.1}" cy="{:.1}" r="3.5" fill="{}" stroke="#333"><title>checkpoint at {t:.1} s, progress {p:.2}</title></circle>"##,
            x(*t),
            y(*p),
            PALETTE[idx % PALETTE.len()]
        );
    }
    // Axes.
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#000"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{:.1}" stroke="#000"/>"##,
        TOP + ph,
        LEFT + pw,
        TOP + ph,
        TOP + ph
    );
    let step = nice_step(wall);
    let mut t = 0.0;
    while t <= wall + 1e-9 {
        let _ = writeln!(s, r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#444">{}</text>"##, x(t), TOP + ph + 40.0, t);
        t += step;
    }
    let ystep = nice_step(ymax).max(1.0);
    let mut p = 0.0;
    while p <= ymax + 1e-9 {
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#444">{}</text><line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#ddd"/>"##,
            LEFT - 6.0,
            y(p) + 4.0,
            p,
            y(p),
            LEFT + pw,
            y(p)
        );
        p += ystep;
    }
    let _ = writeln!(s, r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">time (s)</text>"##, LEFT + pw / 2.0, H - 18.0);
    let _ =
        writeln!(s, r##"<text transform="translate(18,{:.1}) rotate(-90)" text-anchor="middle">progress (epochs)</text>"##, TOP + ph / 2.0);
    let _ = writeln!(
        s,
        r##"<g font-size="11"><rect x="{:.1}" y="{:.1}" width="10" height="8" fill="#1f77b4"/><text x="{:.1}" y="{:.1}">restore</text><rect x="{:.1}" y="{:.1}" width="10" height="8" fill="#ff7f0e"/><text x="{:.1}" y="{:.1}">drain + flush</text><line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#d62728" stroke-width="2"/><text x="{:.1}" y="{:.1}">eviction (dashed: hard)</text></g>"##,
        W - 360.0,
        H - 26.0,
        W - 346.0,
        H - 18.0,
        W - 290.0,
        H - 26.0,
        W - 276.0,
        H - 18.0,
        W - 190.0,
        H - 30.0,
        W - 190.0,
        H - 16.0,
        W - 182.0,
        H - 18.0
    );
    s.push_str("</svg>\n");
    s
}
