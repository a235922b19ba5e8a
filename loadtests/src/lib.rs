//! The load generator of `loadtests/run`: realistic users of the upstream-app
//! contract on goose, against the gateway, upstream-app and a legacy Flask app.
//!
//! Layout: [`users`] (the goose scenarios: browsers, members, exporters),
//! [`record`] (one sample per request, error classification), [`stats`]
//! (phase summaries, fault windows, recovery time), [`summary`]
//! (`summary.json`), [`stack`] (Redis, the apps and the gateway as child
//! processes, and the faults done to them), [`proxy`] (the delaying TCP
//! proxy of `app-slow`), [`scenarios`] (smoke, seed-200, ramp, faults) and
//! [`report`] (the scenario page with SVG plots, the printed table).

pub mod proxy;
pub mod record;
pub mod report;
pub mod scenarios;
pub mod stack;
pub mod stats;
pub mod summary;
pub mod users;

/// Parses a duration in seconds: `90`, `90s`, `2m`, `1m30s`.
pub fn parse_secs(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>() {
        return Some(n);
    }
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.chars() {
        match c {
            '0'..='9' => num.push(c),
            's' | 'm' | 'h' => {
                let n: u64 = num.parse().ok()?;
                num.clear();
                total += n * match c {
                    's' => 1,
                    'm' => 60,
                    _ => 3600,
                };
            }
            _ => return None,
        }
    }
    num.is_empty().then_some(total)
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations() {
        assert_eq!(super::parse_secs("90"), Some(90));
        assert_eq!(super::parse_secs("90s"), Some(90));
        assert_eq!(super::parse_secs("2m"), Some(120));
        assert_eq!(super::parse_secs("1m30s"), Some(90));
        assert_eq!(super::parse_secs("1x"), None);
        assert_eq!(super::parse_secs("30s5"), None);
    }
}
