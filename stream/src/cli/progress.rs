//! Progress of a long run of equal steps (`avlm eval`): a bar on a
//! terminal, and a line every tenth of the run or every 10 s on a pipe, so
//! a logged run is never silent. The ETA is the mean step time so far times
//! the steps left, which moves smoothly where a recent-rate estimate jumps
//! between fast and slow steps.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Longest a piped run goes without a line.
const LINE_EVERY: Duration = Duration::from_secs(10);

pub struct Progress {
    total: u64,
    done: u64,
    /// What one step is, plural ("decodes").
    unit: String,
    started: Instant,
    bar: Option<indicatif::ProgressBar>,
    /// When the last line was printed (pipes only).
    last_line: Instant,
    /// The step count of the last line.
    last_done: u64,
}

impl Progress {
    /// A bar when stderr is a terminal, else lines.
    pub fn new(total: u64, unit: &str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
                "{{bar:40}} {{pos}}/{{len}} {unit} · {{elapsed}} elapsed · {{msg}}"
            )) {
                bar.set_style(style);
            }
            bar
        });
        let now = Instant::now();
        Progress {
            total,
            done: 0,
            unit: unit.to_string(),
            started: now,
            bar,
            last_line: now,
            last_done: 0,
        }
    }

    /// One more step done; `what` names it.
    pub fn step(&mut self, what: &str) {
        self.done += 1;
        let now = Instant::now();
        let eta = eta(self.started.elapsed(), self.done, self.total);
        match &self.bar {
            Some(bar) => {
                bar.set_message(format!("ETA {} · {what}", clock(eta)));
                bar.inc(1);
            }
            None => {
                if due(self.done, self.last_done, self.total, now - self.last_line) {
                    eprintln!(
                        "{}/{} {} · {} elapsed · ETA {} · {what}",
                        self.done,
                        self.total,
                        self.unit,
                        clock(self.started.elapsed()),
                        clock(eta)
                    );
                    self.last_line = now;
                    self.last_done = self.done;
                }
            }
        }
    }

    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Time left at the mean step time so far.
fn eta(elapsed: Duration, done: u64, total: u64) -> Duration {
    if done == 0 {
        return Duration::ZERO;
    }
    elapsed.mul_f64(total.saturating_sub(done) as f64 / done as f64)
}

/// Whether a piped run prints a line now: at the last step, at each tenth
/// of the run, or when the last line is `LINE_EVERY` old.
fn due(done: u64, last_done: u64, total: u64, since_line: Duration) -> bool {
    let tenth = total.div_ceil(10).max(1);
    done == total || done / tenth > last_done / tenth || since_line >= LINE_EVERY
}

/// `m:ss` or `h:mm:ss`.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_is_the_mean_step_time_times_the_steps_left() {
        assert_eq!(eta(Duration::from_secs(10), 2, 10), Duration::from_secs(40));
        assert_eq!(eta(Duration::from_secs(10), 10, 10), Duration::ZERO);
        assert_eq!(eta(Duration::from_secs(10), 0, 10), Duration::ZERO);
    }

    #[test]
    fn a_piped_run_prints_each_tenth_the_end_and_every_10_s() {
        let quick = Duration::from_secs(1);
        let lines: Vec<u64> = (1..=100)
            .scan(0, |last, done| {
                let print = due(done, *last, 100, quick);
                if print {
                    *last = done;
                }
                Some((done, print))
            })
            .filter(|(_, p)| *p)
            .map(|(d, _)| d)
            .collect();
        assert_eq!(lines, vec![10, 20, 30, 40, 50, 60, 70, 80, 90, 100]);
        assert!(due(3, 2, 100, Duration::from_secs(10)));
        assert!(due(1, 0, 3, quick));
    }

    #[test]
    fn clock_reads_minutes_and_hours() {
        assert_eq!(clock(Duration::from_secs(75)), "1:15");
        assert_eq!(clock(Duration::from_secs(3675)), "1:01:15");
    }
}
