//! Finding the files callguard needs (models, the ONNX Runtime library) without environment
//! variables: beside the config file, in the working directory, beside the executable's project,
//! or in the source tree the binary was built from.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Environment variable that overrides where the ONNX Runtime shared library is loaded from.
pub const ORT_LIB_ENV: &str = "CALLGUARD_ORT_LIB";
/// Project-relative location that `scripts/setup.sh` fills.
pub const ORT_LIB_RELATIVE: &str = ".deps/onnxruntime/libonnxruntime.so";

/// Candidate roots, most specific first.
fn roots(base: Option<&Path>) -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Some(b) = base {
        roots.push(b.to_owned());
    }
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    // target/{debug,release}[/deps]/callguard -> the project root is a few levels up.
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).take(4).map(Path::to_path_buf));
    }
    roots.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    roots
}

/// Absolute path of `path`: as given when absolute or present, else the first root holding it.
pub fn locate(path: &Path, base: Option<&Path>) -> Option<PathBuf> {
    if path.is_absolute() {
        return path.exists().then(|| path.to_owned());
    }
    roots(base)
        .into_iter()
        .map(|r| r.join(path))
        .find(|p| p.exists())
}

/// Path of the ONNX Runtime library: `$CALLGUARD_ORT_LIB`, `$ORT_DYLIB_PATH`, or the project's
/// `.deps/onnxruntime/`.
pub fn onnxruntime_library() -> Option<PathBuf> {
    for var in [ORT_LIB_ENV, "ORT_DYLIB_PATH"] {
        if let Some(p) = std::env::var_os(var) {
            return Some(PathBuf::from(p));
        }
    }
    locate(Path::new(ORT_LIB_RELATIVE), None)
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime library not found: run scripts/setup.sh, or set {ORT_LIB_ENV} to libonnxruntime.so"
    )]
    Missing,
    #[error("cannot load ONNX Runtime from {path}: {message}")]
    Load { path: PathBuf, message: String },
}

static RUNTIME: OnceLock<Result<ort::environment::Environment, RuntimeError>> = OnceLock::new();

/// The process-wide ONNX Runtime environment, loaded once from [`onnxruntime_library`].
pub fn onnx_runtime() -> Result<&'static ort::environment::Environment, RuntimeError> {
    RUNTIME
        .get_or_init(|| {
            let path = onnxruntime_library().ok_or(RuntimeError::Missing)?;
            let load_err = |message: String| RuntimeError::Load {
                path: path.clone(),
                message,
            };
            ort::init_from(&path)
                .map_err(|e| load_err(e.to_string()))?
                .with_name("callguard")
                .build()
                .map_err(|e| load_err(e.to_string()))
        })
        .as_ref()
        .map_err(Clone::clone)
}
