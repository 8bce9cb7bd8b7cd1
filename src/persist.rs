//! One way to write a file that must survive a crash or a full disk: the state file, the
//! experiments' counts and the flags cache all go through [`write_atomic`].

use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` so that a reader sees the old file or the new one, never a part:
/// a temporary file beside it (`.NAME.tmp`), fsync, rename over `path`, fsync the directory.
/// On failure the temporary file is removed, so a full disk is not filled further by it (and
/// the old file, and the room it had, stay as they were). Blocking: call it off the runtime.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = temp_path(path);
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::File::open(dir)?.sync_all()
}

/// Where [`write_atomic`] writes before the rename.
pub fn temp_path(path: &Path) -> PathBuf {
    let dir = path.parent().unwrap_or(Path::new(""));
    let name = path.file_name().map_or("file".into(), |n| n.to_string_lossy());
    dir.join(format!(".{name}.tmp"))
}

/// Moves an unreadable file (the state file, the experiments' counts) aside, to `<path>.corrupt-<time>`, so nothing overwrites it.
pub fn keep_aside(path: &std::path::Path, at: std::time::SystemTime) -> std::io::Result<std::path::PathBuf> {
    let stamp: String = humantime::format_rfc3339_seconds(at)
        .to_string()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".corrupt-{stamp}"));
    let aside = std::path::PathBuf::from(aside);
    std::fs::rename(path, &aside)?;
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_whole_files_and_leaves_no_temporary_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert!(!temp_path(&path).exists());
        // A failed write (the target is a directory) keeps the old file and removes the
        // temporary one.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("x"), b"keep").unwrap();
        assert!(write_atomic(&blocked, b"new").is_err());
        assert!(!temp_path(&blocked).exists());
        assert_eq!(std::fs::read(blocked.join("x")).unwrap(), b"keep");
    }
}
