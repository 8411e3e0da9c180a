//! Records the version of the Python turbo is built for, for its messages.
//! turbo is an extension module: it links no libpython, and takes the C API
//! from the interpreter that imports it (maturin sets
//! PYO3_BUILD_EXTENSION_MODULE).
fn main() {
    let config = pyo3_build_config::get();
    println!(
        "cargo:rustc-env=TURBO_PYTHON_VERSION={}.{}",
        config.version().major,
        config.version().minor
    );
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    pyo3_build_config::use_pyo3_cfgs();
}
