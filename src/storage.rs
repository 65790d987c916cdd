//! State that must survive a restart (energy counters, later the
//! balancer's shed set), as small JSON files in `[storage] dir`. Every
//! write is atomic: a power cut leaves the old file or the new one, never
//! half of one.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not valid state ({reason}); it was moved aside to {moved}")]
    Corrupt {
        path: String,
        reason: String,
        moved: String,
    },
    #[error("cannot encode state for {path}: {reason}")]
    Encode { path: String, reason: String },
}

/// A directory of named state files.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// The saved value; `None` when there is none yet. A file that does not
    /// parse is moved aside (kept for a bug report) and reported.
    pub fn load<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StoreError> {
        let path = self.path(name);
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Read {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        match serde_json::from_slice(&text) {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                let moved = path.with_extension("json.bad");
                let _ = fs::rename(&path, &moved);
                Err(StoreError::Corrupt {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                    moved: moved.display().to_string(),
                })
            }
        }
    }

    /// Writes `value` atomically: temp file, fsync, rename, fsync of the
    /// directory.
    pub fn save<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StoreError> {
        let path = self.path(name);
        let err = |source| StoreError::Write {
            path: path.display().to_string(),
            source,
        };
        let body = serde_json::to_vec_pretty(value).map_err(|e| StoreError::Encode {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        fs::create_dir_all(&self.dir).map_err(err)?;
        let tmp = self.dir.join(format!(".{name}.json.tmp"));
        {
            let mut f = File::create(&tmp).map_err(err)?;
            f.write_all(&body).map_err(err)?;
            f.sync_all().map_err(err)?;
        }
        fs::rename(&tmp, &path).map_err(err)?;
        sync_dir(&self.dir);
        Ok(())
    }
}

/// Makes the rename durable; not every filesystem supports it, and the
/// data is already safe in the renamed file, so failures are ignored.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct S {
        a: f64,
        b: String,
    }

    #[test]
    fn round_trip_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("nested"));
        assert_eq!(store.load::<S>("x").unwrap(), None);
        let v = S {
            a: 1.5,
            b: "é".into(),
        };
        store.save("x", &v).unwrap();
        assert_eq!(store.load::<S>("x").unwrap(), Some(v));
        // No temp file left behind.
        let names: Vec<_> = fs::read_dir(dir.path().join("nested"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["x.json".to_string()]);
    }

    #[test]
    fn a_corrupt_file_is_moved_aside_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        fs::write(dir.path().join("x.json"), b"{ not json").unwrap();
        let e = store.load::<S>("x").unwrap_err();
        assert!(e.to_string().contains("moved aside"), "{e}");
        assert!(dir.path().join("x.json.bad").exists());
        assert_eq!(store.load::<S>("x").unwrap(), None);
    }
}
