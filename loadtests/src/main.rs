//! `loadtest`: realistic load on goose.
//!
//! ```text
//! loadtest run smoke|seed-200|ramp|faults   # what loadtests/run calls
//! TARGET=http://127.0.0.1:8080 loadtest attack -- --users 50 --run-time 1m --report-file r.html
//! ```
//! `run` starts what the scenario needs, writes `loadtests/reports/SCENARIO/`
//! (`summary.json`, `report.html`, goose's report per target) and prints a
//! table. Env: `USERS`, `DURATION` (steady phase), `WEIGHTS` (browsers,
//! members, exporters: `7,2,1`), `THINK` (seconds, `1-3`; `0` for throughput
//! mode), `TARGET` (an existing deployment instead of the local setups).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use clap::{Parser, Subcommand};
use goose::config::GooseConfiguration;
use goose::prelude::*;
use loadtests::scenarios::{self, Opts};
use loadtests::stack::Paths;
use loadtests::users::{self, seed, Mix};
use loadtests::{parse_secs, record, report};

#[derive(Parser)]
#[command(
    name = "loadtest",
    version,
    about = "Realistic load scenarios on goose"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a scenario: smoke, seed-200, ramp or faults.
    Run {
        /// Scenario name.
        scenario: String,
        /// Directory of the gateway and upstream-app binaries.
        #[arg(long, default_value = "target/release")]
        bin_dir: PathBuf,
        /// Workspace root.
        #[arg(long, default_value = ".")]
        root: PathBuf,
        /// Reports directory (default: loadtests/reports/SCENARIO).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The users alone against TARGET (or --host), with goose's own flags.
    Attack {
        /// goose's flags (see `loadtest attack -- --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        goose: Vec<String>,
    },
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn mix() -> Result<Mix> {
    Mix::parse(env("WEIGHTS").as_deref(), env("THINK").as_deref()).map_err(|e| anyhow!(e))
}

async fn run(
    scenario: String,
    bin_dir: PathBuf,
    root: PathBuf,
    out: Option<PathBuf>,
) -> Result<bool> {
    let users = env("USERS")
        .map(|u| u.parse::<usize>().context("USERS: a number of users"))
        .transpose()?;
    let duration = env("DURATION")
        .map(|d| parse_secs(&d).ok_or_else(|| anyhow!("DURATION: seconds like 120, 2m or 90s")))
        .transpose()?;
    let mut mix = mix()?;
    if scenario == "smoke" && env("THINK").is_none() {
        mix.think = (std::time::Duration::ZERO, std::time::Duration::ZERO);
    }
    let root = std::fs::canonicalize(&root)?;
    let opts = Opts {
        out: out.unwrap_or_else(|| root.join("loadtests/reports").join(&scenario)),
        scenario: scenario.clone(),
        paths: Paths {
            bin_dir: std::fs::canonicalize(root.join(&bin_dir))
                .with_context(|| format!("binaries in {}", bin_dir.display()))?,
            root,
        },
        users,
        duration,
        mix,
        target: env("TARGET"),
    };
    let (summary, outcome) = scenarios::run(&opts).await?;
    std::fs::write(
        opts.out.join("summary.json"),
        serde_json::to_string_pretty(&summary)? + "\n",
    )?;
    std::fs::write(
        opts.out.join("report.html"),
        report::page(&summary, &outcome),
    )?;
    println!();
    print!("{}", report::table(&summary, &outcome.phases));
    if scenario == "ramp" {
        println!();
        for (n, p, e) in report::breaking_points(&summary) {
            let f = |x: Option<usize>| x.map_or("not reached".to_owned(), |u| format!("{u} users"));
            println!(
                "{n}: p99 passes 0.5 s at {}, errors pass 0.1 % at {}",
                f(p),
                f(e)
            );
        }
    }
    println!(
        "\nreports: {}/report.html, summary.json",
        opts.out.display()
    );
    if scenario == "smoke" {
        // Every request succeeds: a 2xx or a 304, never an error, on every target.
        let mut ok = true;
        for (name, _, samples) in &outcome.runs {
            let bad = samples
                .iter()
                .filter(|s| !((200..300).contains(&s.status) || s.status == 304))
                .count();
            if bad > 0 || samples.is_empty() {
                eprintln!(
                    "smoke: {name}: {bad} of {} requests did not succeed",
                    samples.len()
                );
                ok = false;
            }
        }
        if ok {
            println!("smoke: every request succeeded");
        }
        return Ok(ok);
    }
    Ok(true)
}

async fn attack(args: Vec<String>) -> Result<()> {
    let mut config = GooseConfiguration::try_parse_from(
        std::iter::once("loadtest attack".to_owned()).chain(args),
    )?;
    if config.host.is_none() {
        config.host = env("TARGET");
    }
    if config.host.is_none() {
        return Err(anyhow!("set TARGET=URL (or --host URL)"));
    }
    config.no_telnet = true;
    if config.co_mitigation.is_none() {
        config.co_mitigation = Some(GooseCoordinatedOmissionMitigation::Average);
    }
    let mut g = GooseAttack::initialize_with_config(config)?.test_start(transaction!(seed));
    for s in users::scenarios(&mix()?)? {
        g = g.register_scenario(s);
    }
    g.execute().await?;
    eprintln!("{} requests recorded", record::count());
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    record::epoch();
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Run {
            scenario,
            bin_dir,
            root,
            out,
        } => run(scenario, bin_dir, root, out).await,
        Cmd::Attack { goose } => attack(goose).await.map(|()| true),
    };
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            ExitCode::FAILURE
        }
    }
}
