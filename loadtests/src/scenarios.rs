//! The scenarios of `loadtests/run`: what each starts, the users it runs, the
//! faults it injects, and the figures it keeps.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use goose::config::GooseConfiguration;
use goose::prelude::*;

use crate::record::{self, Sample};
use crate::stack::{Kind, Paths, Target};
use crate::stats;
use crate::summary::{DuringSummary, FaultSummary, Summary, TargetSummary};
use crate::users::{self, Mix};

/// What the command line and the environment ask for.
#[derive(Debug, Clone)]
pub struct Opts {
    /// `smoke`, `seed-200`, `ramp` or `faults`.
    pub scenario: String,
    /// Binaries and the workspace root.
    pub paths: Paths,
    /// `USERS`: the scenario's user count (ramp: the largest level).
    pub users: Option<usize>,
    /// `DURATION` in seconds: the steady phase (faults: the time watched after each fault).
    pub duration: Option<u64>,
    /// Users' mix and think time.
    pub mix: Mix,
    /// `TARGET`: an existing deployment instead of the local setups.
    pub target: Option<String>,
    /// Where reports go: `loadtests/reports/SCENARIO`.
    pub out: PathBuf,
}

/// A measured phase of one attack: a target at one user count.
#[derive(Debug, Clone)]
pub struct Phase {
    /// Target name.
    pub target: String,
    /// Users.
    pub users: usize,
    /// Start and end, ms since the recorder's epoch.
    pub from_ms: u64,
    pub to_ms: u64,
    /// Load generator CPU use over the phase, % of one core.
    pub loadgen_cpu: f64,
}

/// A fault as it happened.
#[derive(Debug, Clone)]
pub struct FaultWindow {
    /// `app-kill`...
    pub name: &'static str,
    /// Target name.
    pub target: String,
    /// Fault start and end, ms since the epoch.
    pub start_ms: u64,
    pub end_ms: u64,
    /// Recovery is looked for until here (the next fault or the end of the run).
    pub horizon_ms: u64,
}

/// Everything one run produced, for the summary and the page.
#[derive(Default)]
pub struct Outcome {
    /// Measured phases.
    pub phases: Vec<Phase>,
    /// Faults.
    pub faults: Vec<FaultWindow>,
    /// Samples of each target's attack (target name, its start, samples).
    pub runs: Vec<(String, u64, Vec<Sample>)>,
    /// Goose reports written (target name, file name).
    pub goose_reports: Vec<(String, String)>,
}

/// When the users of the current attack started (ms since the epoch), set
/// at the end of the test-start transaction.
static USERS_START_MS: AtomicU64 = AtomicU64::new(0);

async fn seed_and_mark(user: &mut GooseUser) -> TransactionResult {
    let r = users::seed(user).await;
    USERS_START_MS.store(record::now_ms(), Ordering::Relaxed);
    r
}

/// CPU time this process used so far, seconds (utime + stime).
pub fn own_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start after ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after ')'.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz.max(1.0)
}

/// A test plan: steps of (users, seconds), each ramping linearly from the
/// previous step's users.
pub type Plan = Vec<(usize, u64)>;

fn plan_string(plan: &Plan) -> String {
    plan.iter()
        .map(|(u, s)| format!("{u},{s}s"))
        .collect::<Vec<_>>()
        .join(";")
}

/// Users at `t_s` seconds into `plan`.
pub fn users_at(plan: &Plan, t_s: f64) -> usize {
    let (mut from, mut t0) = (0usize, 0.0);
    for &(to, secs) in plan {
        let end = t0 + secs as f64;
        if t_s < end {
            let frac = if secs == 0 {
                1.0
            } else {
                (t_s - t0) / secs as f64
            };
            return (from as f64 + (to as f64 - from as f64) * frac).round() as usize;
        }
        from = to;
        t0 = end;
    }
    from
}

/// Runs one goose attack of `mix` against `host` following `plan`, writing
/// goose's HTML report to `report`, printing a progress line every 5 s.
/// Returns when the users started (ms since the epoch).
async fn attack(label: &str, host: &str, plan: &Plan, mix: &Mix, report: &Path) -> Result<u64> {
    let mut config = GooseConfiguration::default();
    config.host = Some(host.to_owned());
    config.report_file = vec![report.display().to_string()];
    config.co_mitigation = Some(GooseCoordinatedOmissionMitigation::Average);
    config.timeout = Some("10".into());
    config.no_telnet = true;
    config.no_print_metrics = true;
    config.no_error_summary = true;
    config.quiet = 1;
    let mut g = GooseAttack::initialize_with_config(config)?
        .set_default(GooseDefault::TestPlan, plan_string(plan).as_str())?
        .test_start(transaction!(seed_and_mark));
    for s in users::scenarios(mix)? {
        g = g.register_scenario(s);
    }
    USERS_START_MS.store(0, Ordering::Relaxed);
    let total: u64 = plan.iter().map(|(_, s)| s).sum();
    let label = label.to_owned();
    let plan2 = plan.clone();
    let progress = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.tick().await;
        loop {
            tick.tick().await;
            let start = USERS_START_MS.load(Ordering::Relaxed);
            if start == 0 {
                continue;
            }
            let now = record::now_ms();
            let recent = record::since(now.saturating_sub(5_000));
            let st = stats::summarize(&recent, now.saturating_sub(5_000), now);
            let t = (now - start) as f64 / 1000.0;
            eprintln!(
                "[{label}] {t:>5.0}s/{total}s users {:>5} | last 5 s: {:>7.1} req/s  p50 {:>7.1} ms  p99 {:>7.1} ms  errors {:>6.2} %",
                users_at(&plan2, t),
                st.rps,
                st.p50_ms,
                st.p99_ms,
                st.error_rate * 100.0
            );
        }
    });
    // Bounded: the plan plus a margin for seeding and stopping the users.
    let bound = Duration::from_secs(total + 120);
    let r = tokio::time::timeout(bound, g.execute()).await;
    progress.abort();
    match r {
        Err(_) => bail!("the attack did not end within {bound:?}"),
        Ok(r) => {
            r?;
        }
    }
    let start = USERS_START_MS.load(Ordering::Relaxed);
    if start == 0 {
        bail!("the users never started (seeding failed?)");
    }
    Ok(start)
}

/// The targets a scenario runs against.
fn kinds(o: &Opts) -> Vec<Option<Kind>> {
    if o.target.is_some() {
        vec![None]
    } else {
        Kind::ALL.iter().copied().map(Some).collect()
    }
}

/// Runs a steady scenario (`smoke`, `seed-200`) or `ramp` on each target.
async fn steady_or_ramp(o: &Opts, levels: &[usize], ramp_s: u64, hold_s: u64) -> Result<Outcome> {
    let mut out = Outcome::default();
    for kind in kinds(o) {
        let name = kind.map_or("target", Kind::name).to_owned();
        let (target, host) = match (kind, &o.target) {
            (Some(k), _) => {
                eprintln!("==> {}: starting {}", o.scenario, k.name());
                let t = Target::start(k, &o.paths, false).await?;
                let url = t.url.clone();
                (Some(t), url)
            }
            (None, Some(url)) => (None, url.clone()),
            (None, None) => unreachable!(),
        };
        let mut plan: Plan = Vec::new();
        for &l in levels {
            plan.push((l, ramp_s));
            plan.push((l, hold_s));
        }
        plan.push((0, 1));
        let file = format!("goose-{name}.html");
        let (sampler, cpu) = cpu_sampler();
        let label = format!("{} {name}", o.scenario);
        let r = attack(&label, &host, &plan, &o.mix, &o.out.join(&file)).await;
        sampler.abort();
        let start = r?;
        let cpu = cpu.lock().map(|v| v.clone()).unwrap_or_default();
        let mut t = start;
        for &l in levels {
            t += ramp_s * 1000;
            let (from, to) = (t, t + hold_s * 1000);
            t = to;
            out.phases.push(Phase {
                target: name.clone(),
                users: l,
                from_ms: from,
                to_ms: to,
                loadgen_cpu: cpu_between(&cpu, from, to),
            });
        }
        out.runs.push((name.clone(), start, record::take()));
        out.goose_reports.push((name.clone(), file));
        if let Some(mut t) = target {
            let gone = t.exited();
            if !gone.is_empty() {
                eprintln!(
                    "warning: {gone:?} exited during the run (logs: {})",
                    t.log_dir().display()
                );
            }
        }
    }
    Ok(out)
}

/// CPU seconds of this process sampled each second, until the task is aborted.
type CpuSamples = Arc<std::sync::Mutex<Vec<(u64, f64)>>>;

fn cpu_sampler() -> (tokio::task::JoinHandle<()>, CpuSamples) {
    let cpu: CpuSamples = Arc::default();
    let c = cpu.clone();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            if let Ok(mut v) = c.lock() {
                v.push((record::now_ms(), own_cpu_seconds()));
            }
        }
    });
    (task, cpu)
}

/// CPU use (% of one core) between two times, from (ms, cpu seconds) samples.
pub fn cpu_between(samples: &[(u64, f64)], from_ms: u64, to_ms: u64) -> f64 {
    let first = samples.iter().find(|(t, _)| *t >= from_ms);
    let last = samples.iter().rev().find(|(t, _)| *t <= to_ms);
    match (first, last) {
        (Some(a), Some(b)) if b.0 > a.0 => (b.1 - a.1) / ((b.0 - a.0) as f64 / 1000.0) * 100.0,
        _ => 0.0,
    }
}

/// The faults, in order, with how long each lasts (0: a one-off action).
pub const FAULTS: [(&str, u64); 5] = [
    ("app-kill", 10),
    ("redis-kill", 10),
    ("app-slow", 20),
    ("reload", 0),
    ("upgrade", 0),
];

/// How long a one-off fault's "during" window is, seconds.
pub const ONE_OFF_WINDOW_S: u64 = 5;

async fn inject(t: &mut Target, name: &str, secs: u64) -> Result<()> {
    match name {
        "app-kill" => {
            t.kill_app();
            tokio::time::sleep(Duration::from_secs(secs)).await;
            t.start_app().await
        }
        "redis-kill" => {
            t.kill_redis();
            tokio::time::sleep(Duration::from_secs(secs)).await;
            t.start_redis().await
        }
        "app-slow" => {
            t.slow(10)?;
            tokio::time::sleep(Duration::from_secs(secs)).await;
            t.slow(1)
        }
        "reload" => t.reload(),
        "upgrade" => t.upgrade().await,
        _ => bail!("unknown fault {name}"),
    }
}

/// `faults`: 200 steady users on each gateway target while each fault happens.
async fn faults(o: &Opts, users: usize, gap_s: u64) -> Result<Outcome> {
    if o.target.is_some() {
        bail!("faults needs the local setups (it kills and restarts them): unset TARGET");
    }
    let mut out = Outcome::default();
    // A few users (a quick check of the scenario itself) need no long ramp.
    let (ramp_s, settle_s) = if users <= 50 { (5, 5) } else { (30u64, 15u64) };
    for kind in [Kind::LegacyGateway, Kind::AppGateway] {
        let name = kind.name().to_owned();
        eprintln!("==> faults: starting {name} (with the delaying proxy)");
        let target = Target::start(kind, &o.paths, true).await?;
        let hold: u64 = settle_s
            + FAULTS
                .iter()
                .map(|(_, s)| (*s).max(ONE_OFF_WINDOW_S) + gap_s)
                .sum::<u64>()
            // Restarts and the upgrade's drain take some seconds of their own.
            + 40;
        let plan: Plan = vec![(users, ramp_s), (users, hold), (0, 1)];
        let file = format!("goose-{name}.html");
        let host = target.url.clone();
        let driver = tokio::spawn(async move {
            let mut target = target;
            let mut windows: Vec<(&'static str, u64, u64)> = Vec::new();
            // Wait for the users, the ramp and a settling time.
            while USERS_START_MS.load(Ordering::Relaxed) == 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_secs(ramp_s + settle_s)).await;
            for (fname, secs) in FAULTS {
                eprintln!("--> fault {fname} on {}", target.kind.name());
                let start = record::now_ms();
                if let Err(e) = inject(&mut target, fname, secs).await {
                    eprintln!("warning: fault {fname} on {}: {e:#}", target.kind.name());
                }
                // A one-off action's window is the few seconds after it.
                let end = if secs == 0 {
                    record::now_ms().max(start + ONE_OFF_WINDOW_S * 1000)
                } else {
                    record::now_ms()
                };
                windows.push((fname, start, end));
                let next = end + gap_s * 1000;
                let now = record::now_ms();
                if next > now {
                    tokio::time::sleep(Duration::from_millis(next - now)).await;
                }
            }
            (target, windows)
        });
        let label = format!("faults {name}");
        let (sampler, cpu) = cpu_sampler();
        let r = attack(&label, &host, &plan, &o.mix, &o.out.join(&file)).await;
        sampler.abort();
        let cpu = cpu.lock().map(|v| v.clone()).unwrap_or_default();
        let (mut target, windows) =
            match tokio::time::timeout(Duration::from_secs(60), driver).await {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => bail!("the fault driver failed: {e}"),
                Err(_) => bail!("the fault driver did not finish"),
            };
        let start = r?;
        let end_ms = start + (ramp_s + hold) * 1000;
        for (i, (fname, s, e)) in windows.iter().enumerate() {
            let horizon = windows.get(i + 1).map_or(end_ms, |w| w.1);
            out.faults.push(FaultWindow {
                name: fname,
                target: name.clone(),
                start_ms: *s,
                end_ms: *e,
                horizon_ms: horizon,
            });
        }
        out.phases.push(Phase {
            target: name.clone(),
            users,
            from_ms: start + ramp_s * 1000,
            to_ms: end_ms,
            loadgen_cpu: cpu_between(&cpu, start + ramp_s * 1000, end_ms),
        });
        out.runs.push((name.clone(), start, record::take()));
        out.goose_reports.push((name.clone(), file));
        let gone = target.exited();
        if !gone.is_empty() {
            eprintln!(
                "warning: {gone:?} exited during the run (logs: {})",
                target.log_dir().display()
            );
        }
    }
    Ok(out)
}

/// Runs `o.scenario`; returns its summary and outcome.
pub async fn run(o: &Opts) -> Result<(Summary, Outcome)> {
    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    let started = now_rfc3339();
    let outcome = match o.scenario.as_str() {
        "smoke" => steady_or_ramp(o, &[o.users.unwrap_or(10)], 2, o.duration.unwrap_or(10)).await?,
        "seed-200" => {
            steady_or_ramp(o, &[o.users.unwrap_or(200)], 30, o.duration.unwrap_or(120)).await?
        }
        "ramp" => {
            let max = o.users.unwrap_or(2000);
            let mut levels: Vec<usize> = [20, 200, 1000, 2000]
                .into_iter()
                .filter(|&l| l <= max)
                .collect();
            if levels.last() != Some(&max) {
                levels.push(max);
            }
            steady_or_ramp(o, &levels, 15, o.duration.unwrap_or(30)).await?
        }
        "faults" => faults(o, o.users.unwrap_or(200), o.duration.unwrap_or(40)).await?,
        s => bail!("unknown scenario {s:?}: smoke, seed-200, ramp or faults"),
    };
    Ok((summarize(&o.scenario, &started, &outcome), outcome))
}

/// `summary.json` from a run's outcome.
pub fn summarize(scenario: &str, started: &str, o: &Outcome) -> Summary {
    let samples_of = |name: &str| {
        o.runs
            .iter()
            .find(|(n, _, _)| n == name)
            .map_or(&[][..], |(_, _, s)| s.as_slice())
    };
    let targets = o
        .phases
        .iter()
        .map(|p| {
            let s = stats::summarize(samples_of(&p.target), p.from_ms, p.to_ms);
            TargetSummary::new(
                &p.target,
                p.users,
                (p.to_ms - p.from_ms) as f64 / 1000.0,
                &s,
            )
        })
        .collect();
    let faults = o
        .faults
        .iter()
        .map(|f| {
            let samples = samples_of(&f.target);
            let d = stats::during(samples, f.start_ms, f.end_ms);
            FaultSummary {
                name: f.name.to_owned(),
                target: f.target.clone(),
                during: DuringSummary {
                    requests: d.requests,
                    errors: d.errors,
                    stale: d.stale,
                },
                recovery_s: stats::recovery_s(samples, f.end_ms, f.horizon_ms),
            }
        })
        .collect();
    Summary {
        scenario: scenario.to_owned(),
        started: started.to_owned(),
        targets,
        faults,
    }
}

fn now_rfc3339() -> String {
    // RFC 3339 in UTC from the system clock, without a date crate.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_and_users_over_time() {
        let plan: Plan = vec![(200, 30), (200, 120), (0, 1)];
        assert_eq!(plan_string(&plan), "200,30s;200,120s;0,1s");
        assert_eq!(users_at(&plan, 0.0), 0);
        assert_eq!(users_at(&plan, 15.0), 100);
        assert_eq!(users_at(&plan, 60.0), 200);
        assert_eq!(users_at(&plan, 500.0), 0);
    }

    #[test]
    fn cpu_use_between_two_times() {
        let s = vec![(0, 0.0), (1000, 0.5), (2000, 1.0), (3000, 1.2)];
        assert_eq!(cpu_between(&s, 0, 2000), 50.0);
        assert!((cpu_between(&s, 1000, 3000) - 35.0).abs() < 1e-9);
        assert_eq!(cpu_between(&s, 5000, 6000), 0.0);
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
    }

    #[test]
    fn the_summary_takes_phases_and_faults_from_the_samples() {
        let mut samples: Vec<Sample> = (0..60_000u64)
            .step_by(10)
            .map(|t| Sample {
                start_ms: t,
                latency_ms: 5.0,
                status: 200,
                stale: false,
            })
            .collect();
        for s in samples
            .iter_mut()
            .filter(|s| (20_000..30_000).contains(&s.start_ms))
        {
            s.status = 502;
        }
        let o = Outcome {
            phases: vec![Phase {
                target: "app-gateway".into(),
                users: 200,
                from_ms: 0,
                to_ms: 60_000,
                loadgen_cpu: 0.0,
            }],
            faults: vec![FaultWindow {
                name: "app-kill",
                target: "app-gateway".into(),
                start_ms: 20_000,
                end_ms: 30_000,
                horizon_ms: 60_000,
            }],
            runs: vec![("app-gateway".into(), 0, samples)],
            goose_reports: vec![],
        };
        let s = summarize("faults", "2026-12-02T00:00:00Z", &o);
        assert_eq!(s.targets[0].requests, 6000);
        assert_eq!(s.targets[0].errors, 1000);
        assert_eq!(s.faults[0].during.requests, 1000);
        assert_eq!(s.faults[0].during.errors, 1000);
        assert_eq!(s.faults[0].recovery_s, Some(0.0));
    }
}
