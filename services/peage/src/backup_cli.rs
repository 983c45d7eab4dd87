//! `peage backup` and `peage restore`: a consistent copy of an embedded data directory, taken
//! while `peage up` runs on it, and its restoration into a new directory (docs/operations.md,
//! "Backups").
//!
//! What makes the copy consistent without stopping anything:
//! 1. the event logs' segments are copied first, then their consumers' committed offsets: every
//!    record at or after an offset copied is in a segment copied (retention only deletes
//!    segments every consumer has committed past);
//! 2. `usage.db` and `billing.db` are snapshotted with SQLite's `VACUUM INTO` (a read
//!    transaction: one instant of each database, writers never blocked); the aggregator commits
//!    an offset only after storing its records, so the usage snapshot holds at least what the
//!    copied offsets say;
//! 3. the segments are copied again, for what was appended meanwhile. After a restore the
//!    aggregator re-reads from the copied offsets and skips what `usage.db` already holds (its
//!    exactly-once positions), so nothing is counted twice or lost; a torn last record of a
//!    segment copied mid-append is cut when the log opens, as after a crash.
//!
//! The copy holds the key that encrypts stored secrets (`secrets.key`) and the admin token:
//! keep it as private as the data directory (it is written with mode 0700/0600).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The two SQLite databases of a data directory, snapshotted whole.
const DATABASES: &[&str] = &["billing.db", "usage.db"];
/// The event logs (call events, usage events): segments and consumer offsets.
const LOGS: &[&str] = &["log", "usage-log"];
/// Never copied: the running process's lock, SQLite's side files (the snapshot has their
/// content), temporary files.
fn skipped(name: &str) -> bool {
    name == "peage.lock"
        || name.ends_with(".tmp")
        || name.ends_with("-wal")
        || name.ends_with("-shm")
        || name.ends_with("-journal")
        || DATABASES.contains(&name)
}

#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// The data directory of `peage up` (it may be running).
    #[arg(long, env = "PEAGE_DATA_DIR", default_value = "./peage-data")]
    pub data_dir: PathBuf,
    /// Where to write the backup: a new directory.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// A directory written by `peage backup`.
    #[arg(long)]
    pub from: PathBuf,
    /// The data directory to restore into: new or empty.
    #[arg(long)]
    pub data_dir: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    peage_version: String,
    created_at: chrono::DateTime<chrono::Utc>,
    source: String,
    files: Vec<FileEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct FileEntry {
    /// Relative to the backup's root, `/`-separated.
    path: String,
    bytes: u64,
    sha256: String,
}

const MANIFEST: &str = "manifest.json";

fn private_dir(path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} private", path.display()))?;
    }
    Ok(())
}

/// Copies `from` to `to`; `Ok(false)` if `from` is gone (a log segment retention removed).
fn copy_file(from: &Path, to: &Path) -> anyhow::Result<bool> {
    match std::fs::copy(from, to) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("copying {}", from.display())),
    }
}

/// Copies every segment of the log at `from` into `to`.
fn copy_segments(from: &Path, to: &Path) -> anyhow::Result<u64> {
    let mut copied = 0;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().ends_with(".log") && copy_file(&entry.path(), &to.join(&name))? {
            copied += 1;
        }
    }
    Ok(copied)
}

/// `VACUUM INTO`: one consistent instant of the database at `db`, written to `out`.
async fn snapshot(db: &Path, out: &Path) -> anyhow::Result<()> {
    use sqlx::ConnectOptions;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .read_only(true)
        .busy_timeout(std::time::Duration::from_secs(30))
        .connect()
        .await
        .with_context(|| format!("opening {}", db.display()))?;
    sqlx::query("VACUUM INTO ?")
        .bind(out.display().to_string())
        .execute(&mut conn)
        .await
        .with_context(|| format!("snapshotting {}", db.display()))?;
    Ok(())
}

fn sha256_of(path: &Path) -> anyhow::Result<(u64, String)> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut hasher = Sha256::new();
    let bytes = std::io::copy(&mut file, &mut hasher)?;
    Ok((bytes, hex::encode(hasher.finalize())))
}

/// Every regular file under `root`, relative, `/`-separated, sorted.
fn files_under(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in std::fs::read_dir(root.join(&rel))? {
            let entry = entry?;
            let path = rel.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else {
                out.push(path.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out.retain(|p| p != MANIFEST);
    out.sort();
    Ok(out)
}

pub async fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let data = &args.data_dir;
    if !data.join("billing.db").exists() {
        bail!(
            "{} is not a Péage data directory (no billing.db)",
            data.display()
        );
    }
    if args.out.exists() {
        bail!(
            "{} exists already: a backup goes to a new directory",
            args.out.display()
        );
    }
    private_dir(&args.out)?;
    let step = |what: &str| eprintln!("backup: {what}");

    // 1. Log segments, then 2. their consumers' offsets.
    for log in LOGS {
        let (from, to) = (data.join(log), args.out.join(log));
        if !from.exists() {
            continue;
        }
        private_dir(&to.join("consumers"))?;
        let n = copy_segments(&from, &to)?;
        step(&format!("{log}: {n} segment(s)"));
        let consumers = from.join("consumers");
        if consumers.exists() {
            for entry in std::fs::read_dir(&consumers)? {
                let entry = entry?;
                let name = entry.file_name();
                if name.to_string_lossy().ends_with(".offset") {
                    copy_file(&entry.path(), &to.join("consumers").join(&name))?;
                }
            }
        }
    }
    // 3. The databases, each at one instant.
    for db in DATABASES {
        let from = data.join(db);
        if from.exists() {
            snapshot(&from, &args.out.join(db)).await?;
            step(&format!("{db}: snapshot taken"));
        }
    }
    // 4. What the logs received meanwhile.
    for log in LOGS {
        let (from, to) = (data.join(log), args.out.join(log));
        if from.exists() {
            copy_segments(&from, &to)?;
        }
    }
    // The rest: tokens, keys, the catalog, demo files, dead letters.
    for entry in std::fs::read_dir(data)? {
        let entry = entry?;
        let name = entry.file_name();
        let name_str = name.to_string_lossy();
        if entry.file_type()?.is_file() && !skipped(&name_str) {
            copy_file(&entry.path(), &args.out.join(&name))?;
        }
    }
    let mut files = Vec::new();
    for path in files_under(&args.out)? {
        let (bytes, sha256) = sha256_of(&args.out.join(&path))?;
        files.push(FileEntry {
            path,
            bytes,
            sha256,
        });
    }
    let manifest = Manifest {
        format: 1,
        peage_version: env!("CARGO_PKG_VERSION").to_string(),
        created_at: chrono::Utc::now(),
        source: std::fs::canonicalize(data)
            .unwrap_or(data.clone())
            .display()
            .to_string(),
        files,
    };
    let total: u64 = manifest.files.iter().map(|f| f.bytes).sum();
    crate::up::write_private(
        &args.out.join(MANIFEST),
        &serde_json::to_vec_pretty(&manifest)?,
    )?;
    println!(
        "backup of {} written to {}: {} files, {} bytes",
        data.display(),
        args.out.display(),
        manifest.files.len(),
        total
    );
    Ok(())
}

pub async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(args.from.join(MANIFEST)).with_context(|| {
        format!(
            "{} is not a backup written by `peage backup` (no {MANIFEST})",
            args.from.display()
        )
    })?;
    let manifest: Manifest = serde_json::from_str(&text)
        .with_context(|| format!("reading {}", args.from.join(MANIFEST).display()))?;
    if manifest.format != 1 {
        bail!(
            "backup format {} is not one this Péage reads (1)",
            manifest.format
        );
    }
    // Everything is checked before anything is written.
    for f in &manifest.files {
        if f.path.split('/').any(|p| p == ".." || p.is_empty()) || f.path.starts_with('/') {
            bail!("the manifest names an unsafe path {:?}", f.path);
        }
        let (bytes, sha256) = sha256_of(&args.from.join(&f.path))
            .with_context(|| format!("the backup lacks {}", f.path))?;
        if bytes != f.bytes || sha256 != f.sha256 {
            bail!(
                "{} in the backup is damaged: its checksum differs from the manifest's",
                f.path
            );
        }
    }
    if args.data_dir.exists()
        && std::fs::read_dir(&args.data_dir)
            .with_context(|| format!("reading {}", args.data_dir.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{} is not empty: restore into a new directory, then point peage up at it",
            args.data_dir.display()
        );
    }
    private_dir(&args.data_dir)?;
    let _lock = crate::up::lock_data_dir(&args.data_dir)?;
    for f in &manifest.files {
        let to = args.data_dir.join(&f.path);
        if let Some(parent) = to.parent() {
            private_dir(parent)?;
        }
        std::fs::copy(args.from.join(&f.path), &to)
            .with_context(|| format!("writing {}", to.display()))?;
    }
    println!(
        "restored {} files from {} (taken {}) into {}; start it with `peage up --data-dir {}`",
        manifest.files.len(),
        args.from.display(),
        manifest.created_at.to_rfc3339(),
        args.data_dir.display(),
        args.data_dir.display()
    );
    Ok(())
}
