//! Finding the sibling binaries (`concord-pd`, `concord-store`,
//! `concord-router`, `pd-ctl`) next to the running `concord` executable.

use std::path::{Path, PathBuf};

use crate::error::{OpsError, Result};

/// Environment variable naming another directory to take binaries from.
pub const BIN_DIR_ENV: &str = "CONCORD_BIN_DIR";

/// The directory the sibling binaries are taken from: `$CONCORD_BIN_DIR`
/// if set, else the directory of the running executable.
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe()
        .map_err(|e| OpsError::io("cannot locate the running executable", "concord", e))?;
    Ok(exe
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".")))
}

/// The path of binary `name` in `dir`, checked to exist.
pub fn locate_in(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(OpsError::BinaryMissing {
            name: name.to_string(),
            dir: dir.to_path_buf(),
        })
    }
}

/// The path of sibling binary `name`, checked to exist.
pub fn locate(name: &str) -> Result<PathBuf> {
    locate_in(&bin_dir()?, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binary_names_the_directory_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let err = locate_in(dir.path(), "concord-pd").unwrap_err().to_string();
        assert!(err.contains("concord-pd"), "{err}");
        assert!(err.contains("cargo build --workspace --bins"), "{err}");
        std::fs::write(dir.path().join("concord-pd"), b"").unwrap();
        assert!(locate_in(dir.path(), "concord-pd").is_ok());
    }
}
