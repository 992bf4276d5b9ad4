//! How `fleetctl` prints a job: its state word, the one-line progress bar (or a fine-tune's
//! step line) on stderr, the detailed view of `show`, and the rows of `list`.

use std::io::Write;

use fleet_client::JobView;

/// The job's state as its protocol word (`running`, `succeeded`, ...).
pub(crate) fn state(view: &JobView) -> String {
    serde_json::to_value(view.record.state).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// One line: `[#####.....] 120/500 images  3 failed  running`.
pub(crate) fn draw(view: &JobView, overwrite: bool) {
    if let (Some(t), false) = (&view.training, view.record.state.is_terminal()) {
        let last = t.steps.last();
        let line = format!(
            "step {}/{} phase {}  loss {}  lr {}  {:.1} steps/s  ETA {:.0} s{}",
            t.step,
            t.total_steps,
            t.phase,
            last.map_or("-".into(), |s| format!("{:.4}", s.loss)),
            last.map_or("-".into(), |s| format!("{:.2e}", s.lr)),
            t.steps_per_s,
            t.eta_s,
            t.resumed_from.map_or(String::new(), |r| format!("  (resumed from step {r})"))
        );
        let mut err = std::io::stderr();
        let _ = if overwrite { write!(err, "\r{line}\x1b[K") } else { writeln!(err, "{line}") };
        let _ = err.flush();
        return;
    }
    let p = view.progress;
    let done = p.items_succeeded + p.items_failed;
    let total = p.items_total.max(done);
    let width = 40usize;
    let filled = if total == 0 { 0 } else { (done as usize * width / total as usize).min(width) };
    let more = if p.sharded { "" } else { "+" };
    let line = format!(
        "[{}{}] {done}/{total}{more} images  {} failed  {}",
        "#".repeat(filled),
        ".".repeat(width - filled),
        p.items_failed,
        state(view)
    );
    let mut err = std::io::stderr();
    let _ = if overwrite { write!(err, "\r{line}\x1b[K") } else { writeln!(err, "{line}") };
    let _ = err.flush();
}

/// The detailed view: record, counts, wall time, reason and a fine-tune's figures.
pub(crate) fn print_view(view: &JobView) {
    let r = &view.record;
    let p = view.progress;
    println!("job        {} (tenant {})", r.id, r.tenant);
    println!("state      {}", state(view));
    println!("model      {}", r.model);
    println!("priority   {:?}", r.priority);
    println!(
        "tasks      {}/{} ended{}",
        p.tasks_done,
        p.tasks_total,
        if p.sharded { "" } else { " (still splitting)" }
    );
    println!("items      {} total, {} succeeded, {} failed", p.items_total, p.items_succeeded, p.items_failed);
    if let Some(end) = r.finished_at_ms {
        println!("wall time  {:.1} s", end.saturating_sub(r.accepted_at_ms) as f64 / 1e3);
    }
    if let Some(reason) = &r.reason {
        println!("reason     {reason}");
    }
    if let Some(t) = &view.training {
        println!("training   step {}/{} (phase {}), {:.2} steps/s", t.step, t.total_steps, t.phase, t.steps_per_s);
        if let Some(s) = t.steps.last() {
            println!("           last loss {:.4} at learning rate {:.3e}", s.loss, s.lr);
        }
        println!("           report in <tenant>/results/{}/fine-tune.json", r.id);
    }
}

/// The header of the job table of `list`.
pub(crate) fn print_list_header() {
    println!("{:<40} {:<28} {:>8} {:>8} {:>8}", "job", "state", "items", "ok", "failed");
}

/// One job's row of the job table of `list`.
pub(crate) fn print_list_row(id: &str, view: &JobView) {
    let p = view.progress;
    println!("{:<40} {:<28} {:>8} {:>8} {:>8}", id, state(view), p.items_total, p.items_succeeded, p.items_failed);
}
