//! The key-encryption key (docs/security.md, "Secrets at rest"): where `peage up` keeps it,
//! and `peage secrets` to make a key and to rotate.
//!
//! An embedded data directory holds `secrets.key` (the current key, mode 0600). A rotation
//! writes the new key as `secrets.next.key`, moves the current one to
//! `secrets.previous.<kid>.key`, makes the next one current, seals every stored secret again
//! and only then deletes the previous key: a crash at any step leaves every key a stored value
//! may need on disk, and the next start (which reseals too) finishes the job.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use peage_billing::service::secrets::{new_key_text, parse_key, reseal_all, SecretBox};
use peage_billing_store::BillingStore;

use crate::invoice_cli::Target;

const CURRENT: &str = "secrets.key";
const NEXT: &str = "secrets.next.key";

#[derive(Debug, clap::Subcommand)]
pub enum SecretsCommand {
    /// Print a new key-encryption key (base64 of 32 random bytes) for `secrets.key_file`.
    NewKey,
    /// Seal every stored signing key and webhook secret with the current key. Embedded: a new
    /// key is made first. Distributed: set `secrets.key_file` to the new key and list the old
    /// one in `secrets.previous_key_files`, run this, then remove the old key.
    Rotate {
        #[command(flatten)]
        target: Target,
    },
}

fn previous_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if (name.starts_with("secrets.previous.") && name.ends_with(".key")) || name == NEXT {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn read_key(path: &Path) -> anyhow::Result<Vec<u8>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_key(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The key-encryption keys of an embedded data directory: `PEAGE_SECRETS__KEY` or
/// `PEAGE_SECRETS__KEY_FILE` when set, else `secrets.key` (made on first start), with every
/// previous or half-rotated key found beside it.
pub fn embedded_secrets(
    dir: &Path,
    section: &crate::config::SecretsSection,
) -> anyhow::Result<Arc<SecretBox>> {
    if section.key.is_some() || section.key_file.is_some() {
        return section.secret_box();
    }
    let current = dir.join(CURRENT);
    if !current.exists() {
        if dir.join(NEXT).exists() {
            // A rotation stopped between its renames: the next key becomes current.
            std::fs::rename(dir.join(NEXT), &current)
                .with_context(|| format!("finishing a key rotation in {}", dir.display()))?;
        } else {
            crate::up::write_private(&current, new_key_text().as_bytes())?;
            tracing::info!(path = %current.display(), "generated the key that encrypts stored secrets");
        }
    }
    let previous = previous_files(dir)?
        .iter()
        .map(|p| read_key(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Arc::new(
        SecretBox::new(&read_key(&current)?, &previous)
            .map_err(|e| anyhow::anyhow!("{}: {e}", current.display()))?,
    ))
}

/// Seals what is not sealed with the current key yet (values from before encryption, values
/// under a previous key); every billing start runs it.
pub async fn reseal(store: &dyn BillingStore, secrets: &SecretBox) -> anyhow::Result<()> {
    let done = reseal_all(store, secrets)
        .await
        .map_err(|e| anyhow::anyhow!("sealing stored secrets: {e}"))?;
    if done.resealed > 0 {
        tracing::info!(
            resealed = done.resealed,
            already = done.current,
            kid = secrets.kid(),
            "stored secrets sealed with the current key"
        );
    }
    Ok(())
}

pub async fn run(c: SecretsCommand) -> anyhow::Result<()> {
    match c {
        SecretsCommand::NewKey => {
            println!("{}", new_key_text());
            Ok(())
        }
        SecretsCommand::Rotate { target } => {
            let store = target.billing_store().await?;
            match (&target.config, &target.data_dir) {
                (Some(config), _) => {
                    let config = crate::config::load(config, std::env::vars())?;
                    let secrets = config.secrets.secret_box()?;
                    let done = reseal_all(store.as_ref(), &secrets)
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    println!(
                        "{} secrets sealed with key {}, {} already were; secrets.previous_key_files can now be removed",
                        done.resealed,
                        secrets.kid(),
                        done.current
                    );
                    Ok(())
                }
                (None, Some(dir)) => rotate_embedded(store.as_ref(), dir).await,
                (None, None) => {
                    anyhow::bail!("say where the data is: --data-dir DIR or --config FILE")
                }
            }
        }
    }
}

async fn rotate_embedded(store: &dyn BillingStore, dir: &Path) -> anyhow::Result<()> {
    // A running `peage up` seals new secrets with the key it started with: not while it runs.
    let _lock = crate::up::lock_data_dir(dir)?;
    let old = embedded_secrets(dir, &Default::default())?;
    let current = dir.join(CURRENT);
    let next = dir.join(NEXT);
    crate::up::write_private(&next, new_key_text().as_bytes())?;
    let parked = dir.join(format!("secrets.previous.{}.key", old.kid()));
    std::fs::rename(&current, &parked).with_context(|| format!("moving {}", current.display()))?;
    std::fs::rename(&next, &current).with_context(|| format!("moving {}", next.display()))?;
    let secrets = embedded_secrets(dir, &Default::default())?;
    let done = reseal_all(store, &secrets)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for p in previous_files(dir)? {
        std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
    }
    println!(
        "{} secrets sealed with the new key {} ({} already were); the old key is deleted",
        done.resealed,
        secrets.kid(),
        done.current
    );
    Ok(())
}
