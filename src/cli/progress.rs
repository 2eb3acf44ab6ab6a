//! Progress of long runs: a spinner with events/s on a terminal, plain log lines otherwise.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Shows progress on stderr.
pub struct Progress {
    label: &'static str,
    bar: Option<ProgressBar>,
    started: Instant,
    last_line: Mutex<Instant>,
}

const LOG_EVERY: Duration = Duration::from_secs(2);

impl Progress {
    /// A bar with events/s and ETA on a terminal when the total is known, a spinner when it is
    /// not; with `--json` or when stderr is not a terminal, log lines.
    pub fn start(label: &'static str, json: bool, total: Option<u64>) -> Self {
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let (bar, template) = match total {
                Some(total) => (
                    ProgressBar::new(total),
                    "{prefix}: {wide_bar} {human_pos}/{human_len} events ({per_sec}, ETA {eta})",
                ),
                None => (
                    ProgressBar::new_spinner(),
                    "{spinner} {prefix}: {human_pos} events ({per_sec}) {elapsed}",
                ),
            };
            let style = ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_spinner());
            bar.set_style(style);
            bar.set_prefix(label);
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress {
            label,
            bar,
            started: Instant::now(),
            last_line: Mutex::new(Instant::now()),
        }
    }

    /// Events processed so far by this run.
    pub fn update(&self, events: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(events);
            return;
        }
        let Ok(mut last) = self.last_line.lock() else {
            return;
        };
        if last.elapsed() >= LOG_EVERY {
            *last = Instant::now();
            let seconds = self.started.elapsed().as_secs_f64().max(1e-9);
            eprintln!(
                "{}: {events} events, {:.0} events/s",
                self.label,
                events as f64 / seconds
            );
        }
    }

    /// Clears the spinner.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
