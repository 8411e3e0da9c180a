//! The config file: `-c FILE`, `-c python:MODULE`, or `./gunicorn.conf.py`
//! when present, executed in the supervisor's interpreter as Gunicorn executes
//! it. Module-level names that are settings become values between the
//! environment and `GUNICORN_CMD_ARGS`.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyModule, PyString, PyTuple};

use super::Values;
use super::settings::{self, Kind, SETTINGS};

const READER: &std::ffi::CStr =
    match std::ffi::CStr::from_bytes_with_nul(concat!(include_str!("file.py"), "\0").as_bytes()) {
        Ok(s) => s,
        Err(_) => panic!("file.py contains a NUL byte"),
    };

/// The file read when no `-c` is given, as in Gunicorn.
pub const DEFAULT: &str = "./gunicorn.conf.py";

/// Gunicorn's server hooks; `crate::hooks` calls them.
const HOOKS: &[&str] = &[
    "on_starting",
    "on_reload",
    "when_ready",
    "pre_fork",
    "post_fork",
    "post_worker_init",
    "worker_int",
    "worker_abort",
    "pre_exec",
    "pre_request",
    "post_request",
    "child_exit",
    "worker_exit",
    "nworkers_changed",
    "on_exit",
    "ssl_context",
];

/// Gunicorn settings that turbo deliberately ignores: its design has no
/// place for them.
const IGNORED: &[&str] = &["worker_tmp_dir"];

/// Gunicorn settings turbo does not implement yet.
const NOT_YET: &[&str] = &[
    "spew",
    "initgroups",
    "disable_redirect_access_to_syslog",
    "logger_class",
    "syslog_addr",
    "syslog",
    "syslog_prefix",
    "syslog_facility",
    "enable_stdio_inheritance",
    "proc_name",
    "default_proc_name",
    "paste",
    "raw_paste_global_conf",
    "permit_obsolete_folding",
    "strip_header_spaces",
    "permit_unconventional_http_method",
    "permit_unconventional_http_version",
    "casefold_http_method",
    "forwarder_headers",
    "header_map",
];

/// What a config file gave, and the warnings to log once logging is up.
#[derive(Default)]
pub struct FileValues {
    pub values: Values,
    pub warnings: Vec<String>,
    /// The file's namespace, when it defines hooks.
    pub hooks: Option<std::sync::Arc<crate::python::Held<PyDict>>>,
    /// The file, when it defines pre_request or post_request, which shards
    /// in sub-interpreters execute again.
    pub request_hooks: Option<String>,
    /// `logconfig_dict`, for Python's logging.config.dictConfig.
    pub logconfig_dict: Option<std::sync::Arc<crate::python::Held<PyDict>>>,
}

/// Reads the config file at `location`; errors are one line, except a
/// failing file, whose traceback comes first.
pub fn read(location: &str) -> Result<FileValues, String> {
    if !location.starts_with("python:") && !std::path::Path::new(location).exists() {
        return Err(format!("config file {location} does not exist"));
    }
    Python::attach(|py| read_in(py, location))
}

/// Executes the config file in the current interpreter and returns its
/// namespace: a shard's own copy of the hooks.
pub fn namespace<'py>(py: Python<'py>, location: &str) -> Result<Bound<'py, PyDict>, String> {
    let read = reader(py)?
        .getattr("read")
        .and_then(|f| f.call1((location, Vec::<&str>::new(), Vec::<&str>::new())))
        .and_then(|r| r.get_item(3))
        .map_err(|e| format!("failed to read config file {location}: {e}"))?;
    read.cast_into::<PyDict>()
        .map_err(|e| format!("failed to read config file {location}: {e}"))
}

fn reader(py: Python<'_>) -> Result<Bound<'_, PyModule>, String> {
    PyModule::from_code(py, READER, c"turbo_config.py", c"turbo_config")
        .map_err(|e| format!("turbo's config reader failed: {e}"))
}

fn read_in(py: Python<'_>, location: &str) -> Result<FileValues, String> {
    let reader = reader(py)?;
    let known: Vec<&str> = SETTINGS
        .iter()
        .map(|s| s.name)
        .chain(["wsgi_app", "logconfig_dict"])
        .chain(IGNORED.iter().copied())
        .chain(NOT_YET.iter().copied())
        .collect();
    let read = reader
        .getattr("read")
        .and_then(|f| f.call1((location, known, HOOKS.to_vec())))
        .map_err(|e| {
            let text = crate::python::error_text(py, &e);
            format!("failed to read config file {location}:\n{text}")
        })?;
    let (found, hooks, others, namespace): (
        Bound<'_, PyDict>,
        Vec<String>,
        Vec<String>,
        Bound<'_, PyDict>,
    ) = read
        .extract()
        .map_err(|e| format!("turbo's config reader failed: {e}"))?;
    let mut file = FileValues {
        values: Values::default(),
        warnings: Vec::new(),
        hooks: (!hooks.is_empty())
            .then(|| std::sync::Arc::new(crate::python::Held::new(namespace.unbind()))),
        // Absolute: shards execute it again after `chdir`.
        request_hooks: hooks
            .iter()
            .any(|h| h == "pre_request" || h == "post_request")
            .then(|| match location.strip_prefix("python:") {
                Some(_) => location.to_string(),
                None => std::path::absolute(location)
                    .map_or_else(|_| location.to_string(), |p| p.display().to_string()),
            }),
        logconfig_dict: None,
    };
    for (name, value) in found.iter() {
        let name: String = name.extract().map_err(|e: PyErr| e.to_string())?;
        if value.is_none() {
            continue;
        }
        if name == "wsgi_app" {
            file.values.app = Some(text(&value).ok_or_else(|| bad(location, &name, &value))?);
            continue;
        }
        if name == "logconfig_dict" {
            let dict = value
                .cast_into::<PyDict>()
                .map_err(|_| format!("{location}: logconfig_dict must be a dict"))?;
            if !dict.is_empty() {
                file.logconfig_dict =
                    Some(std::sync::Arc::new(crate::python::Held::new(dict.unbind())));
            }
            continue;
        }
        if IGNORED.contains(&name.as_str()) {
            file.warnings.push(format!(
                "{location}: {name} has no meaning in turbo and is ignored"
            ));
            continue;
        }
        if NOT_YET.contains(&name.as_str()) {
            file.warnings.push(format!(
                "{location}: {name} is not supported by turbo yet and is ignored"
            ));
            continue;
        }
        let Some(setting) = settings::find(&name) else {
            continue;
        };
        if setting.name == "config" {
            continue;
        }
        let list = match setting.kind {
            Kind::List if value.is_instance_of::<PyDict>() => {
                let mut items = Vec::new();
                let dict = value.cast::<PyDict>().map_err(|e| e.to_string())?;
                for (k, v) in dict.iter() {
                    let k = text(&k).ok_or_else(|| bad(location, &name, &value))?;
                    let v = text(&v).ok_or_else(|| bad(location, &name, &value))?;
                    items.push(format!("{k}={v}"));
                }
                items
            }
            Kind::Bool | Kind::Off => {
                vec![value.is_truthy().map_err(|e| e.to_string())?.to_string()]
            }
            Kind::Optional(bare) if value.is_instance_of::<PyBool>() => {
                let on = value.is_truthy().map_err(|e| e.to_string())?;
                vec![if on { bare } else { setting.default }.to_string()]
            }
            Kind::List if value.is_instance_of::<PyList>() || value.is_instance_of::<PyTuple>() => {
                let mut items = Vec::new();
                for item in value.try_iter().map_err(|e| e.to_string())? {
                    let item = item.map_err(|e| e.to_string())?;
                    items.push(text(&item).ok_or_else(|| bad(location, &name, &item))?);
                }
                items
            }
            _ => vec![text(&value).ok_or_else(|| bad(location, &name, &value))?],
        };
        file.values.given.insert(setting.name, list);
    }
    if hooks.iter().any(|h| h == "ssl_context") {
        file.warnings.push(format!(
            "{location}: the ssl_context hook is not called: turbo's TLS is rustls, set up by \
             certfile, keyfile, ca_certs, cert_reqs and ciphers"
        ));
    }
    for name in others {
        if let Some(near) = near_miss(&name) {
            return Err(format!(
                "{location}: unknown setting '{name}' (did you mean '{near}'?)"
            ));
        }
    }
    Ok(file)
}

/// A setting value as command-line text: strings, numbers, and floats that
/// are whole numbers.
fn text(value: &Bound<'_, PyAny>) -> Option<String> {
    if value.is_instance_of::<PyBool>() {
        return None;
    }
    if let Ok(s) = value.cast::<PyString>() {
        return s.to_str().ok().map(str::to_string);
    }
    if value.is_instance_of::<PyInt>() {
        return value.str().ok().map(|s| s.to_string());
    }
    if let Ok(f) = value.cast::<PyFloat>() {
        let f = f.value();
        return Some(if f.fract() == 0.0 {
            format!("{}", f as i64)
        } else {
            f.to_string()
        });
    }
    None
}

fn bad(location: &str, name: &str, value: &Bound<'_, PyAny>) -> String {
    let shown = value
        .repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "?".into());
    format!("{location}: invalid value {shown} for {name}")
}

/// A setting an unknown name is probably a typo of.
fn near_miss(name: &str) -> Option<&'static str> {
    SETTINGS
        .iter()
        .map(|s| s.name)
        .chain(IGNORED.iter().copied())
        .chain(NOT_YET.iter().copied())
        .find(|known| distance(name, known) <= 2 && name.len() > 3)
}

/// Levenshtein distance, for typos.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            let next = (row[j + 1] + 1).min(row[j] + 1).min(prev + cost);
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_are_caught_and_helpers_are_not() {
        assert_eq!(near_miss("wokers"), Some("workers"));
        assert_eq!(near_miss("timout"), Some("timeout"));
        assert_eq!(near_miss("cpu_count"), None);
        assert_eq!(near_miss("bind_address_list"), None);
    }
}
