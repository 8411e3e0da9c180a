//! Links the binary to the libpython it was built against, with an rpath so it
//! runs without LD_LIBRARY_PATH, and records that Python's version for the
//! virtualenv check at start-up.
fn main() {
    let config = pyo3_build_config::get();
    if let Some(dir) = config.lib_dir() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    println!(
        "cargo:rustc-env=TURBO_PYTHON_VERSION={}.{}",
        config.version().major,
        config.version().minor
    );
    if let Some(exe) = config.executable() {
        println!("cargo:rustc-env=TURBO_PYTHON_EXECUTABLE={exe}");
    }
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    pyo3_build_config::use_pyo3_cfgs();
}
