//! `--reload`, as Gunicorn's polling reloader: a thread in the worker that
//! serves shard 0 polls the modification times of the app's source files
//! (every module loaded when the shard booted, plus `reload_extra_files`) and
//! asks the supervisor for fresh workers when one changes. The old workers
//! serve until the new ones are ready, so an edit that breaks the app leaves
//! the running code in place.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use pyo3::prelude::*;

/// How often the files are checked.
const POLL: Duration = Duration::from_secs(1);

/// The source files of the modules loaded in the current interpreter.
pub fn module_files(py: Python<'_>) -> Vec<PathBuf> {
    let listed = py
        .import("sys")
        .and_then(|sys| sys.getattr("modules"))
        // A copy: reading a lazy module's __file__ may import, and change
        // sys.modules while it is being walked.
        .and_then(|modules| modules.call_method0("copy"))
        .and_then(|modules| modules.call_method0("values"))
        .and_then(|values| {
            let mut files = Vec::new();
            for module in values.try_iter()? {
                let file = module?.getattr("__file__").ok();
                if let Some(path) = file.and_then(|f| f.extract::<PathBuf>().ok()) {
                    files.push(path);
                }
            }
            Ok(files)
        });
    listed.unwrap_or_default()
}

/// Starts the watching thread; it reports `reload` to the supervisor on a change.
pub fn spawn(files: Vec<PathBuf>) -> std::io::Result<()> {
    let mtime = |path: &PathBuf| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let mut seen: Vec<(PathBuf, Option<SystemTime>)> = files
        .into_iter()
        .map(|p| (mtime(&p), p))
        .map(|(t, p)| (p, t))
        .collect();
    seen.sort();
    seen.dedup();
    std::thread::Builder::new()
        .name("turbo-reloader".into())
        .spawn(move || {
            loop {
                std::thread::sleep(POLL);
                for (path, last) in seen.iter_mut() {
                    let now = mtime(path);
                    if now != *last {
                        *last = now;
                        log::info!("Worker reloading: {} modified", path.display());
                        crate::report::send("reload");
                    }
                }
            }
        })
        .map(drop)
}
