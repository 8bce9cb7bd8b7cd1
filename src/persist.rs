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

/// Moves an unreadable file (the state file, the experiments' counts) aside, to
/// `<path>.corrupt-<time>` (`-2`, `-3`, … after it when one of that second is already there), so
/// nothing overwrites it, not even another file kept aside in the same second.
pub fn keep_aside(path: &std::path::Path, at: std::time::SystemTime) -> std::io::Result<std::path::PathBuf> {
    let stamp: String = humantime::format_rfc3339_seconds(at)
        .to_string()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    for n in 1..=1000u32 {
        let mut aside = path.as_os_str().to_owned();
        aside.push(format!(".corrupt-{stamp}"));
        if n > 1 {
            aside.push(format!("-{n}"));
        }
        let aside = std::path::PathBuf::from(aside);
        // A hard link never replaces a file that is there; the name then goes away. What
        // cannot be linked (a directory where the file should be, a file system without hard
        // links) is renamed to a name not taken.
        match std::fs::hard_link(path, &aside) {
            Ok(()) => {
                std::fs::remove_file(path)?;
                return Ok(aside);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(_) if std::fs::symlink_metadata(&aside).is_ok() => continue,
            Err(_) => {
                std::fs::rename(path, &aside)?;
                return Ok(aside);
            }
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        "a thousand files were kept aside in this second",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_kept_aside_in_the_same_second_are_all_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let at = std::time::SystemTime::now();
        let mut kept = Vec::new();
        for text in ["one", "two", "three"] {
            std::fs::write(&path, text).unwrap();
            kept.push(keep_aside(&path, at).unwrap());
        }
        assert!(!path.exists());
        let texts: Vec<String> = kept.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect();
        assert_eq!(texts, ["one", "two", "three"]);
        assert!(kept[1].to_string_lossy().ends_with("-2"), "{kept:?}");
        // A directory in the file's place is kept aside too, under a name not taken.
        std::fs::create_dir(&path).unwrap();
        let dir_aside = keep_aside(&path, at).unwrap();
        assert!(
            dir_aside.is_dir() && dir_aside.to_string_lossy().ends_with("-4"),
            "{dir_aside:?}"
        );
        assert!(!path.exists());
    }

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
