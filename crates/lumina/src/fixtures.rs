//! Locating the reference fixtures (diffusers outputs on tiny models) that the parity tests of
//! every crate in this workspace run against.

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};

/// `$LUMINA_FIXTURES`, else `../shared/fixtures` next to the repository.
pub fn fixture_root() -> PathBuf {
    match std::env::var_os("LUMINA_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures"),
    }
}

/// Case folders (holding `call.json`) of `family` under `root`, sorted; possibly none.
pub fn case_dirs(root: &Path, family: &str) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(root.join(family)) {
        for entry in entries {
            let path = entry
                .map_err(|source| Error::Io {
                    path: root.join(family),
                    source,
                })?
                .path();
            if path.join("call.json").is_file() {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Every case of `family` under the fixture root. An error when there is none: a parity test
/// that checks nothing must not pass.
pub fn cases(family: &str) -> Result<Vec<PathBuf>> {
    let root = fixture_root();
    let found = case_dirs(&root, family)?;
    if found.is_empty() {
        return Err(Error::input(
            "fixture cases",
            format!("at least one under {}", root.join(family).display()),
            "none (set LUMINA_FIXTURES to the fixture root)",
        ));
    }
    Ok(found)
}

/// Max |a − b| over all elements, or an error when the shapes differ.
pub fn max_abs_diff(got: &Tensor, want: &Tensor) -> Result<f32> {
    if got.dims() != want.dims() {
        return Err(Error::input(
            "compared tensor",
            format!("shape {:?}", want.dims()),
            format!("{:?}", got.dims()),
        ));
    }
    let d = (got.to_dtype(DType::F32)? - want.to_dtype(DType::F32)?)?.abs()?;
    Ok(d.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}
