//! What the demo shows while it runs: progress bars on a terminal (mesh formation, rollout),
//! otherwise a status line every few seconds. Notes (the mesh formed, the rollout started or
//! ended) are printed as lines either way.

use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::runner::Tick;

/// Plain mode: a status line at most this often (and only when something changed).
const PLAIN_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Bars {
    multi: MultiProgress,
    mesh: ProgressBar,
    ota: Option<ProgressBar>,
}

/// The display.
#[derive(Debug)]
pub struct Ui {
    bars: Option<Bars>,
    start: Instant,
    last_plain: Option<Instant>,
    last_status: String,
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

impl Ui {
    /// Bars when `terminal`, plain lines otherwise.
    pub fn new(terminal: bool, nodes: u32) -> Self {
        let bars = terminal.then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
            let mesh = multi.add(ProgressBar::new(u64::from(nodes)));
            mesh.set_style(style("{prefix:>8} [{bar:40}] {pos}/{len} nodes {msg}"));
            mesh.set_prefix("mesh");
            Bars {
                multi,
                mesh,
                ota: None,
            }
        });
        Ui {
            bars,
            start: Instant::now(),
            last_plain: None,
            last_status: String::new(),
        }
    }

    /// Wall-clock seconds since the start.
    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Prints a line above the bars (or plainly).
    pub fn note(&self, text: &str) {
        let line = format!("[{:6.1}s] {text}", self.elapsed());
        match &self.bars {
            Some(b) => {
                let _ = b.multi.println(line);
            }
            None => println!("{line}"),
        }
    }

    /// Shows the state after a tick.
    pub fn tick(&mut self, t: &Tick) {
        let mesh_msg = match t.formed_s {
            Some(f) => format!("formed after {f:.1} s · simulated {:.0} s", t.sim_s),
            None => format!("forming · simulated {:.0} s", t.sim_s),
        };
        if let Some(b) = &mut self.bars {
            b.mesh.set_position(t.known as u64);
            b.mesh.set_message(mesh_msg);
            if let Some(c) = &t.campaign {
                let bar = b.ota.get_or_insert_with(|| {
                    let bar = b.multi.add(ProgressBar::new(c.chunks.1.max(1)));
                    bar.set_style(style("{prefix:>8} [{bar:40}] {percent:>3}% {msg}"));
                    bar.set_prefix("rollout");
                    bar
                });
                bar.set_length(c.chunks.1.max(1));
                bar.set_position(c.chunks.0);
                bar.set_message(format!(
                    "{}/{} nodes updated{} · {} mode",
                    c.done,
                    c.targets,
                    if c.failed > 0 {
                        format!(", {} failed", c.failed)
                    } else {
                        String::new()
                    },
                    c.mode
                ));
            }
            return;
        }
        let mut status = format!("mesh {}/{} nodes", t.known, t.nodes);
        if let Some(c) = &t.campaign {
            let pct = if c.chunks.1 == 0 {
                0.0
            } else {
                100.0 * c.chunks.0 as f64 / c.chunks.1 as f64
            };
            status.push_str(&format!(
                "; rollout {}/{} nodes updated, {} failed, {pct:.0} % of chunks",
                c.done, c.targets, c.failed
            ));
        }
        let due = self.last_plain.is_none_or(|t| t.elapsed() >= PLAIN_EVERY);
        if due && status != self.last_status {
            self.note(&format!("{status} ({:.1} s simulated)", t.sim_s));
            self.last_status = status;
            self.last_plain = Some(Instant::now());
        }
    }

    /// Leaves the bars on screen as they are.
    pub fn finish(&mut self) {
        if let Some(b) = self.bars.take() {
            b.mesh.abandon();
            if let Some(o) = b.ota {
                o.abandon();
            }
        }
    }
}
