//! The scenario page `report.html`: the summary table, the faults table and
//! SVG plots drawn here with plotters (inline, so the page works offline),
//! linking to goose's own report of each target. Also the table printed at
//! the end of a run.

use std::fmt::Write as _;

use plotters::prelude::*;

use crate::scenarios::{Outcome, Phase};
use crate::stats;
use crate::summary::Summary;

const COLORS: [RGBColor; 3] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
];

/// The plain-text table printed at the end of a run.
pub fn table(s: &Summary, phases: &[Phase]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| {:<15} | {:>5} | {:>6} | {:>8} | {:>7} | {:>8} | {:>8} | {:>8} | {:>6} | {:>8} | {:>7} |",
        "target", "users", "secs", "requests", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors", "error %", "gen cpu"
    );
    let _ = writeln!(
        t,
        "|-----------------|-------|--------|----------|---------|----------|----------|----------|--------|----------|---------|"
    );
    for (i, x) in s.targets.iter().enumerate() {
        let cpu = phases.get(i).map_or(0.0, |p| p.loadgen_cpu);
        let _ = writeln!(
            t,
            "| {:<15} | {:>5} | {:>6.0} | {:>8} | {:>7.1} | {:>8.1} | {:>8.1} | {:>8.1} | {:>6} | {:>8.3} | {:>6.0}% |",
            x.name, x.users, x.duration_s, x.requests, x.rps, x.p50_ms, x.p95_ms, x.p99_ms, x.errors,
            x.error_rate * 100.0, cpu
        );
    }
    if !s.faults.is_empty() {
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "| {:<15} | {:<10} | {:>8} | {:>6} | {:>6} | {:>10} |",
            "target", "fault", "requests", "errors", "stale", "recovery s"
        );
        let _ = writeln!(
            t,
            "|-----------------|------------|----------|--------|--------|------------|"
        );
        for f in &s.faults {
            let _ = writeln!(
                t,
                "| {:<15} | {:<10} | {:>8} | {:>6} | {:>6} | {:>10} |",
                f.target,
                f.name,
                f.during.requests,
                f.during.errors,
                f.during.stale,
                f.recovery_s.map_or("never".into(), |r| format!("{r:.0}"))
            );
        }
    }
    t
}

/// For `ramp`: per target, the first user count whose p99 passed 0.5 s and
/// the first whose error rate passed 0.1 % (`None`: not within the run).
pub fn breaking_points(s: &Summary) -> Vec<(String, Option<usize>, Option<usize>)> {
    let mut names: Vec<&str> = Vec::new();
    for t in &s.targets {
        if !names.contains(&t.name.as_str()) {
            names.push(&t.name);
        }
    }
    names
        .into_iter()
        .map(|n| {
            let rows = s.targets.iter().filter(|t| t.name == n);
            let p99 = rows
                .clone()
                .find(|t| t.p99_ms > stats::HEALTHY_P99_MS)
                .map(|t| t.users);
            let err = rows
                .clone()
                .find(|t| t.error_rate > stats::HEALTHY_ERROR_RATE)
                .map(|t| t.users);
            (n.to_owned(), p99, err)
        })
        .collect()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A line chart: one series per (name, points); shaded x ranges; log y when asked.
fn chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    shaded: &[(f64, f64, String)],
    log_y: bool,
) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 360)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let xs = series.iter().flat_map(|(_, p)| p.iter().map(|q| q.0));
        let ys = series.iter().flat_map(|(_, p)| p.iter().map(|q| q.1));
        let x_max = xs.fold(1.0f64, f64::max);
        let y_max = ys
            .fold(0.0f64, f64::max)
            .max(if log_y { 10.0 } else { 0.001 })
            * 1.1;
        let mut builder = ChartBuilder::on(&root);
        builder
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(70);
        // The same drawing on a linear or a log y axis (different coordinate types).
        macro_rules! draw {
            ($c:expr, $y_min:expr) => {{
                let mut c = $c;
                let _ = c.configure_mesh().x_desc(x_label).y_desc(y_label).draw();
                for (a, b, _) in shaded {
                    let _ = c.draw_series(std::iter::once(Rectangle::new(
                        [(*a, $y_min), (*b, y_max)],
                        RGBColor(255, 200, 120).mix(0.35).filled(),
                    )));
                }
                for (i, (name, pts)) in series.iter().enumerate() {
                    let col = COLORS[i % COLORS.len()];
                    let pts: Vec<(f64, f64)> =
                        pts.iter().map(|(x, y)| (*x, y.max($y_min))).collect();
                    if let Ok(a) = c.draw_series(LineSeries::new(pts, col.stroke_width(2))) {
                        a.label(name.as_str()).legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2))
                        });
                    }
                }
                let _ = c
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .draw();
            }};
        }
        if log_y {
            match builder.build_cartesian_2d(0f64..x_max, (1f64..y_max).log_scale()) {
                Ok(c) => draw!(c, 1.0),
                Err(_) => return svg_fallback(title),
            }
        } else {
            match builder.build_cartesian_2d(0f64..x_max, 0f64..y_max) {
                Ok(c) => draw!(c, 0.0),
                Err(_) => return svg_fallback(title),
            }
        }
        let _ = root.present();
    }
    svg
}

fn svg_fallback(title: &str) -> String {
    format!("<p>(no data for {})</p>", esc(title))
}

/// The scenario page.
pub fn page(s: &Summary, o: &Outcome) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>loadtest {0}</title>\
         <style>body{{font-family:sans-serif;max-width:960px;margin:1em auto}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}\
         td:first-child,th:first-child{{text-align:left}}</style></head><body>\
         <h1>loadtest: {0}</h1><p>Started {1}. Latencies are per request, sent to body read; \
         an error is a transport failure, a 5xx or a 429. <code>summary.json</code> holds the same figures.</p>",
        esc(&s.scenario),
        esc(&s.started)
    );
    h.push_str("<h2>Targets</h2><table><tr><th>target</th><th>users</th><th>seconds</th><th>requests</th><th>req/s</th><th>p50 ms</th><th>p95 ms</th><th>p99 ms</th><th>errors</th><th>error rate</th><th>load generator CPU</th></tr>");
    for (i, t) in s.targets.iter().enumerate() {
        let cpu = o.phases.get(i).map_or(0.0, |p| p.loadgen_cpu);
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{:.0}</td><td>{}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{}</td><td>{:.3} %</td><td>{:.0} %</td></tr>",
            esc(&t.name), t.users, t.duration_s, t.requests, t.rps, t.p50_ms, t.p95_ms, t.p99_ms, t.errors, t.error_rate * 100.0, cpu
        );
    }
    h.push_str("</table>");
    if !s.faults.is_empty() {
        h.push_str("<h2>Faults</h2><table><tr><th>target</th><th>fault</th><th>requests during</th><th>errors</th><th>stale answers</th><th>recovery s</th></tr>");
        for f in &s.faults {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&f.target),
                esc(&f.name),
                f.during.requests,
                f.during.errors,
                f.during.stale,
                f.recovery_s.map_or("never".into(), |r| format!("{r:.0}"))
            );
        }
        h.push_str("</table><p>Recovery: seconds from the end of the fault to the start of the first 10 s window with error rate &lt; 0.1 % and p99 &lt; 0.5 s.</p>");
    }
    // Plots.
    let multi_level = o.phases.iter().any(|p| p.users != o.phases[0].users);
    if s.scenario == "ramp" || multi_level {
        h.push_str("<h2>Where each setup breaks</h2><table><tr><th>target</th><th>p99 passes 0.5 s at</th><th>errors pass 0.1 % at</th></tr>");
        for (n, p, e) in breaking_points(s) {
            let f = |x: Option<usize>| x.map_or("not reached".into(), |u| format!("{u} users"));
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&n),
                f(p),
                f(e)
            );
        }
        h.push_str("</table>");
        let mut p99 = Vec::new();
        let mut err = Vec::new();
        for (n, _, _) in breaking_points(s) {
            let rows: Vec<_> = s.targets.iter().filter(|t| t.name == n).collect();
            p99.push((
                n.clone(),
                rows.iter().map(|t| (t.users as f64, t.p99_ms)).collect(),
            ));
            err.push((
                n.clone(),
                rows.iter()
                    .map(|t| (t.users as f64, t.error_rate * 100.0))
                    .collect(),
            ));
        }
        h.push_str(&chart(
            "p99 latency against users",
            "users",
            "p99 ms (log)",
            &p99,
            &[],
            true,
        ));
        h.push_str(&chart(
            "error rate against users",
            "users",
            "error %",
            &err,
            &[],
            false,
        ));
    }
    for (name, start, samples) in &o.runs {
        let end = samples.last().map_or(*start, |x| x.start_ms);
        let pts = stats::series(samples, *start, end, 1000);
        let shaded: Vec<(f64, f64, String)> = o
            .faults
            .iter()
            .filter(|f| &f.target == name)
            .map(|f| {
                (
                    (f.start_ms.saturating_sub(*start)) as f64 / 1000.0,
                    (f.end_ms.saturating_sub(*start)) as f64 / 1000.0,
                    f.name.to_owned(),
                )
            })
            .collect();
        let lat = vec![
            (
                "p50".to_owned(),
                pts.iter().map(|p| (p.t_s, p.p50_ms)).collect(),
            ),
            (
                "p99".to_owned(),
                pts.iter().map(|p| (p.t_s, p.p99_ms)).collect(),
            ),
        ];
        let _ = write!(h, "<h2>{} over time</h2>", esc(name));
        if !shaded.is_empty() {
            let names: Vec<String> = shaded
                .iter()
                .map(|(a, b, n)| format!("{n} {a:.0}–{b:.0} s"))
                .collect();
            let _ = write!(h, "<p>Shaded: {}</p>", esc(&names.join(", ")));
        }
        h.push_str(&chart(
            &format!("{name}: latency per second"),
            "seconds since the users started",
            "ms (log)",
            &lat,
            &shaded,
            true,
        ));
        let er = vec![(
            "error %".to_owned(),
            pts.iter().map(|p| (p.t_s, p.error_rate * 100.0)).collect(),
        )];
        h.push_str(&chart(
            &format!("{name}: error rate per second"),
            "seconds since the users started",
            "error %",
            &er,
            &shaded,
            false,
        ));
        let rps = vec![(
            "req/s".to_owned(),
            pts.iter().map(|p| (p.t_s, p.rps)).collect(),
        )];
        h.push_str(&chart(
            &format!("{name}: requests per second"),
            "seconds since the users started",
            "req/s",
            &rps,
            &shaded,
            false,
        ));
    }
    h.push_str("<h2>goose's reports</h2><ul>");
    for (n, f) in &o.goose_reports {
        let _ = write!(h, "<li><a href=\"{0}\">{1}</a> ({0})</li>", esc(f), esc(n));
    }
    h.push_str("</ul></body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::TargetSummary;

    fn row(name: &str, users: usize, p99: f64, er: f64) -> TargetSummary {
        TargetSummary {
            name: name.into(),
            users,
            duration_s: 30.0,
            requests: 100,
            rps: 10.0,
            p50_ms: 1.0,
            p95_ms: 1.0,
            p99_ms: p99,
            errors: 0,
            error_rate: er,
        }
    }

    #[test]
    fn breaking_points_are_the_first_levels_past_the_promises() {
        let s = Summary {
            scenario: "ramp".into(),
            started: "x".into(),
            targets: vec![
                row("a", 20, 100.0, 0.0),
                row("a", 200, 600.0, 0.0),
                row("a", 1000, 900.0, 0.01),
                row("b", 20, 1.0, 0.0),
                row("b", 200, 2.0, 0.0),
            ],
            faults: vec![],
        };
        assert_eq!(
            breaking_points(&s),
            vec![
                ("a".into(), Some(200), Some(1000)),
                ("b".into(), None, None)
            ]
        );
        let page = page(&s, &Outcome::default());
        assert!(page.contains("<svg"), "the plots are inline SVG");
        assert!(page.contains("not reached"));
    }
}
