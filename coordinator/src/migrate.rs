//! `vss migrate`: the command line of [`vss_migrations`].

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::json;
use std::sync::Arc;
use vss_migrations::files::Migration;
use vss_migrations::runner::{Runner, Status};
use vss_migrations::schema::Schema;

use vss_protocol::config::stores::{display_url, vault::is_http_url};
use vss_protocol::config::{SecretRef, Timeouts, VaultAuth, VaultConnection};
use vss_stores::vault::VaultClient;

/// Vault configuration as versioned migrations.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(subcommand)]
    command: MigrateCommand,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Subcommand)]
enum MigrateCommand {
    /// Compare the schema with Vault and write the next migration (or say nothing changed).
    Generate {
        /// The schema file (`desired_state:` by Vault path).
        #[arg(long)]
        schema: PathBuf,
        /// The migration's name.
        #[arg(long, default_value = "migration")]
        name: String,
        /// Allow disabling mounts and auth methods and deleting policies.
        #[arg(long)]
        allow_destructive: bool,
    },
    /// What `apply` would do.
    Plan,
    /// Apply pending migrations in order.
    Apply,
    /// Applied and pending migrations, and the dirty flag.
    Status,
    /// Run `down` tasks of applied migrations, newest first.
    Rollback {
        /// Keep migrations up to this version (default: roll back the last one).
        #[arg(long)]
        to: Option<u32>,
        /// Allow down tasks that disable engines or auth methods or delete policies and data.
        #[arg(long)]
        allow_destructive: bool,
    },
    /// Clear the dirty flag after fixing Vault by hand.
    Repair,
}

#[derive(Debug, Args)]
struct CommonArgs {
    /// The migrations folder.
    #[arg(long, global = true, default_value = "migrations")]
    dir: PathBuf,
    /// Vault's address.
    #[arg(long, global = true, env = "VAULT_ADDR", default_value = "http://127.0.0.1:8200")]
    vault_addr: String,
    /// Vault namespace.
    #[arg(long, global = true, env = "VAULT_NAMESPACE")]
    vault_namespace: Option<String>,
    /// A file holding the token (default: the VAULT_TOKEN variable).
    #[arg(long, global = true)]
    vault_token_file: Option<PathBuf>,
    /// AppRole login instead of a token: a file holding the role id.
    #[arg(long, global = true, requires = "approle_secret_id_file")]
    approle_role_id_file: Option<PathBuf>,
    /// AppRole: a file holding the secret id.
    #[arg(long, global = true)]
    approle_secret_id_file: Option<PathBuf>,
    /// AppRole: its auth mount.
    #[arg(long, global = true, default_value = "approle")]
    approle_mount: String,
    /// The KV v2 engine holding the history and the lock (may be nested, e.g. `team/kv`).
    #[arg(long, global = true, default_value = "secret")]
    state_mount: String,
    /// The folder in that engine.
    #[arg(long, global = true, default_value = "vss-migrations")]
    state_folder: String,
    /// How long to wait for another runner's lock.
    #[arg(long, global = true, default_value_t = 60)]
    lock_wait: u64,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Human)]
    output: Format,
    /// Exit 1 when migrations are pending (plan, status) or one was written (generate).
    #[arg(long, global = true)]
    exit_code: bool,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum, PartialEq, Eq)]
enum Format {
    Human,
    Json,
}

impl CommonArgs {
    /// The Vault connection the flags describe.
    fn vault(&self) -> anyhow::Result<Arc<VaultClient>> {
        if !is_http_url(&self.vault_addr) {
            anyhow::bail!(
                "--vault-addr / VAULT_ADDR is not an http:// or https:// URL (e.g. https://vault.example.com:8200)"
            );
        }
        let auth = match (&self.approle_role_id_file, &self.approle_secret_id_file) {
            (Some(role), Some(secret)) => VaultAuth::AppRole {
                mount: self.approle_mount.clone(),
                role_id: SecretRef::File(role.clone()),
                secret_id: SecretRef::File(secret.clone()),
            },
            _ => VaultAuth::Token(match &self.vault_token_file {
                Some(path) => SecretRef::File(path.clone()),
                None => SecretRef::Env("VAULT_TOKEN".into()),
            }),
        };
        let connection = VaultConnection {
            address: self.vault_addr.clone(),
            namespace: self.vault_namespace.clone(),
            auth,
        };
        let label = format!("vault:{}", display_url(&self.vault_addr));
        Ok(Arc::new(VaultClient::open(&connection, &label, &Timeouts::default())?))
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Runs a `vss migrate` command; returns the exit code.
pub async fn run(args: MigrateArgs) -> anyhow::Result<u8> {
    let common = &args.common;
    let runner = Runner::new(
        common.vault()?,
        &common.state_mount,
        &common.state_folder,
        &common.dir,
        &env,
        Duration::from_secs(common.lock_wait),
    );
    let json = common.output == Format::Json;
    let mut out = std::io::stdout().lock();
    let mut changes = false;
    match args.command {
        MigrateCommand::Generate { schema, name, allow_destructive } => {
            let schema = Schema::load(&schema)?;
            for device in &schema.audit_devices {
                eprintln!(
                    "warning: sys/audit/{device}: audit devices are managed in OpenBao's config file (OpenBao 2.x refuses them over the API); skipped"
                );
            }
            let written = runner.generate(&schema, &name, allow_destructive).await?;
            changes = written.is_some();
            if json {
                writeln!(out, "{}", json!({ "written": written }))?;
            } else {
                match written {
                    Some(path) => writeln!(out, "Wrote {}", path.display())?,
                    None => writeln!(out, "No changes required")?,
                }
            }
        }
        MigrateCommand::Plan => {
            let pending = runner.plan().await?;
            changes = !pending.is_empty();
            write_plan(&mut out, &pending, json)?;
        }
        MigrateCommand::Apply => {
            let applied = runner.apply().await?;
            if json {
                writeln!(out, "{}", json!({ "applied": applied }))?;
            } else if applied.is_empty() {
                writeln!(out, "Nothing to apply")?;
            } else {
                for v in applied {
                    writeln!(out, "Applied V{v:04}")?;
                }
            }
        }
        MigrateCommand::Status => {
            let status = runner.status().await?;
            changes = !status.pending.is_empty();
            write_status(&mut out, &status, json)?;
        }
        MigrateCommand::Rollback { to, allow_destructive } => {
            let rolled = runner.rollback(to, allow_destructive).await?;
            if json {
                writeln!(out, "{}", json!({ "rolled_back": rolled }))?;
            } else if rolled.is_empty() {
                writeln!(out, "Nothing to roll back")?;
            } else {
                for v in rolled {
                    writeln!(out, "Rolled back V{v:04}")?;
                }
            }
        }
        MigrateCommand::Repair => {
            let cleared = runner.repair().await?;
            if json {
                writeln!(out, "{}", json!({ "cleared": cleared }))?;
            } else {
                match cleared {
                    Some(d) => writeln!(
                        out,
                        "Cleared the dirty flag of V{:04} ({} task {})",
                        d.version, d.direction, d.task
                    )?,
                    None => writeln!(out, "Not dirty")?,
                }
            }
        }
    }
    Ok(if common.exit_code && changes { 1 } else { 0 })
}

/// `vss migrate plan`'s output: the pending migrations and their tasks.
fn write_plan(out: &mut impl Write, pending: &[Migration], json: bool) -> anyhow::Result<()> {
    if json {
        let pending: Vec<_> = pending
            .iter()
            .map(|m| {
                let up: Vec<String> = m.up.iter().map(|t| t.describe()).collect();
                json!({"version": m.version, "name": m.name, "up": up})
            })
            .collect();
        writeln!(out, "{}", json!({ "pending": pending }))?;
    } else if pending.is_empty() {
        writeln!(out, "Nothing to apply")?;
    } else {
        for m in pending {
            writeln!(out, "V{:04} {}:", m.version, m.name)?;
            for task in &m.up {
                writeln!(out, "  {}", task.describe())?;
            }
        }
    }
    Ok(())
}

/// `vss migrate status`'s output: applied, pending, and a dirty migration if any.
fn write_status(out: &mut impl Write, status: &Status, json: bool) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string(status)?)?;
        return Ok(());
    }
    for a in &status.applied {
        writeln!(out, "applied  V{:04} {}", a.version, a.name)?;
    }
    for (v, name) in &status.pending {
        writeln!(out, "pending  V{v:04} {name}")?;
    }
    if let Some(d) = &status.dirty {
        writeln!(out, "DIRTY    V{:04} {} task {}: {}", d.version, d.direction, d.task, d.error)?;
    }
    Ok(())
}
