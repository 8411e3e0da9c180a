//! `--isolation auto`: whether every compiled module the app could import
//! loads in an own-GIL sub-interpreter, decided before any worker serves
//! (docs/architecture.md, "Choosing the isolation"). `probe.py` does the
//! work in the host's main interpreter, and loads the modules in child
//! processes.

use pyo3::prelude::*;
use pyo3::types::PyModule;

use crate::config::Config;

const PROBE_SOURCE: &str = include_str!("probe.py");

/// What probe.py's `decide` returns: `Verdict`'s fields.
type Decided = (bool, String, Vec<(String, String)>);

/// What auto isolation takes, and why.
pub struct Verdict {
    /// Every compiled module the app could import supports sub-interpreters.
    pub subinterpreters: bool,
    /// The one line the supervisor logs: the mode, how many modules refused,
    /// the first few, and how to pin a mode.
    pub line: String,
    /// Each refusing module, with what it said.
    pub refused: Vec<(String, String)>,
}

/// Probes the app's importable extension modules, or reads their cached
/// verdicts; the caller holds no GIL. A probe that fails itself gives
/// process mode, which serves any app. `cwd` is the app's working directory,
/// which shards put on sys.path.
pub fn decide(config: &Config, cwd: &std::path::Path) -> Verdict {
    Python::attach(|py| {
        let run = || -> PyResult<Decided> {
            let source = std::ffi::CString::new(PROBE_SOURCE)?;
            let probe = PyModule::from_code(py, &source, c"turbo_probe.py", c"turbo_probe")?;
            probe
                .getattr("decide")?
                .call1((
                    PROBE_SOURCE,
                    config.pythonpath.clone(),
                    cwd.as_os_str(),
                    cache_dir(),
                ))?
                .extract()
        };
        match run() {
            Ok((subinterpreters, line, refused)) => Verdict {
                subinterpreters,
                line,
                refused,
            },
            Err(err) => Verdict {
                subinterpreters: false,
                line: format!(
                    "Isolation: one worker process per shard: the probe of the app's compiled \
                     modules failed ({}); --isolation subinterpreter pins the other mode",
                    super::error_text(py, &err).trim_end().replace('\n', " | ")
                ),
                refused: Vec::new(),
            },
        }
    })
}

/// Where verdicts are cached, by file identity: `$XDG_CACHE_HOME/turbo/isolation`
/// or `~/.cache/turbo/isolation`; none where neither is known.
fn cache_dir() -> Option<std::path::PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::path::PathBuf::from(std::env::var_os("HOME").filter(|d| !d.is_empty())?)
            .join(".cache"),
    };
    Some(base.join("turbo").join("isolation"))
}
