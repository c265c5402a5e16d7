//! The applied history, the lock, and the commands that change Vault: generate, apply,
//! rollback, repair; and status.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use vss_protocol::SecretValue;
use vss_stores::vault::{Method, VaultClient, VaultStore};
use vss_stores::{ErrorKind, Precondition, SecretStore, Version};

use crate::MigrateError;
use crate::files::{self, Migration, MigrationFile};
use crate::generate::{Current, generate};
use crate::normalize::mount_type;
use crate::schema::{Resource, Schema, expand};
use crate::task::Task;

/// The KV secret (under the state path) holding the history.
const HISTORY: &str = "history";
/// The KV secret (under the state path) holding the lock.
const LOCK: &str = "lock";
/// A lock not released within this time is taken over (its holder died).
const LOCK_TTL: Duration = Duration::from_secs(300);

/// One applied migration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// Its version.
    pub version: u32,
    /// Its name.
    pub name: String,
    /// The checksum of its file when applied.
    pub checksum: String,
    /// Unix seconds.
    pub applied_at: u64,
}

/// Where a migration stopped halfway: Vault is in between two versions until a human looks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dirty {
    /// The migration.
    pub version: u32,
    /// `up` (apply) or `down` (rollback).
    pub direction: String,
    /// The failed task, 1-based, and what it was.
    pub task: String,
    /// The error.
    pub error: String,
}

/// The history kept in Vault.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// Applied migrations, in order.
    pub applied: Vec<Applied>,
    /// Set when a migration failed midway.
    pub dirty: Option<Dirty>,
}

/// What `status` reports.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// Applied migrations.
    pub applied: Vec<Applied>,
    /// Migrations in the folder not applied yet: `(version, name)`.
    pub pending: Vec<(u32, String)>,
    /// The dirty flag.
    pub dirty: Option<Dirty>,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Runs migration commands against one Vault through `client`; the history and the lock live
/// in a KV v2 folder over the same connection.
pub struct Runner<'a> {
    client: Arc<VaultClient>,
    /// The KV v2 folder of the history and the lock.
    vault: VaultStore,
    state_mount: String,
    dir: PathBuf,
    env: &'a (dyn Fn(&str) -> Option<String> + Sync),
    owner: String,
    lock_wait: Duration,
    /// The lock's KV version while this runner holds it.
    held: std::sync::Mutex<Option<Version>>,
}

impl<'a> Runner<'a> {
    /// A runner over the migrations in `dir`; `env` expands `${VAR}`s. The folder
    /// `state_folder` of the KV v2 engine `state_mount` holds the history and the lock.
    pub fn new(
        client: Arc<VaultClient>,
        state_mount: &str,
        state_folder: &str,
        dir: &Path,
        env: &'a (dyn Fn(&str) -> Option<String> + Sync),
        lock_wait: Duration,
    ) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
        let owner = format!("{host}:{}:{}", std::process::id(), now());
        let vault = VaultStore::over(client.clone(), state_mount, state_folder);
        Self {
            client,
            vault,
            state_mount: state_mount.trim_matches('/').to_string(),
            dir: dir.to_path_buf(),
            env,
            owner,
            lock_wait,
            held: std::sync::Mutex::new(None),
        }
    }

    /// The history and its KV version (`None`: nothing applied ever).
    pub async fn history(&self) -> Result<(History, Option<Version>), MigrateError> {
        let Some(found) = self.vault.read(HISTORY).await? else {
            // No history is "nothing applied" only if it is looked for in the right place.
            let mounts = self.client.api(Method::GET, "sys/mounts", None).await?;
            let exists = mounts
                .as_ref()
                .and_then(|m| m.get("data"))
                .is_some_and(|d| d.get(format!("{}/", self.state_mount)).is_some());
            if !exists {
                return Err(MigrateError::NoStateMount { mount: self.state_mount.clone() });
            }
            return Ok((History::default(), None));
        };
        let text = found.value.expose().get("history").and_then(Value::as_str).unwrap_or("{}");
        let history = serde_json::from_str(text).map_err(|e| {
            MigrateError::Refused(format!("the migration history in Vault is unreadable: {e}"))
        })?;
        Ok((history, Some(found.version)))
    }

    async fn save(&self, history: &History, at: &mut Option<Version>) -> Result<(), MigrateError> {
        let text = serde_json::to_string(history).expect("histories serialize");
        let value =
            SecretValue::new(Map::from_iter([("history".to_string(), Value::String(text))]));
        let pre = match at.take() {
            Some(v) => Precondition::Matches(v),
            None => Precondition::Absent,
        };
        *at = Some(self.vault.write(HISTORY, &value, pre).await?);
        Ok(())
    }

    fn lock_value(&self, expires_at: u64) -> SecretValue {
        SecretValue::new(
            json!({"owner": self.owner, "expires_at": expires_at})
                .as_object()
                .cloned()
                .expect("an object"),
        )
    }

    /// Extends the lock this runner holds; fails if someone took it over meanwhile.
    async fn renew(&self) -> Result<(), MigrateError> {
        let Some(held) = self.held.lock().expect("lock state").clone() else { return Ok(()) };
        let value = self.lock_value(now() + LOCK_TTL.as_secs());
        match self.vault.write(LOCK, &value, Precondition::Matches(held)).await {
            Ok(version) => {
                *self.held.lock().expect("lock state") = Some(version);
                Ok(())
            }
            Err(e) if e.kind == ErrorKind::Conflict => Err(MigrateError::LockLost),
            Err(e) => Err(e.into()),
        }
    }

    /// Takes the lock (waiting up to the lock wait), or says who holds it.
    async fn lock(&self) -> Result<(), MigrateError> {
        let version = self.acquire().await?;
        *self.held.lock().expect("lock state") = Some(version);
        Ok(())
    }

    async fn acquire(&self) -> Result<Version, MigrateError> {
        let value = self.lock_value(now() + LOCK_TTL.as_secs());
        let deadline = std::time::Instant::now() + self.lock_wait;
        loop {
            match self.vault.write(LOCK, &value, Precondition::Absent).await {
                Ok(version) => return Ok(version),
                Err(e) if e.kind != ErrorKind::Conflict => return Err(e.into()),
                Err(_) => {}
            }
            let Some(held) = self.vault.read(LOCK).await? else { continue };
            let owner =
                held.value.expose().get("owner").and_then(Value::as_str).unwrap_or("?").to_string();
            let expires =
                held.value.expose().get("expires_at").and_then(Value::as_u64).unwrap_or(0);
            if expires <= now() {
                // A released lock is written with `expires_at: 0`: taking it is routine.
                if expires > 0 {
                    tracing::warn!(%owner, "taking over an expired migration lock");
                }
                match self.vault.write(LOCK, &value, Precondition::Matches(held.version)).await {
                    Ok(version) => return Ok(version),
                    Err(e) if e.kind == ErrorKind::Conflict => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            if std::time::Instant::now() >= deadline {
                return Err(MigrateError::Locked { owner });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Releases the lock by writing it expired, only if this runner still holds it (a
    /// check-and-set write, so another runner's lock is never removed).
    async fn unlock(&self) {
        let Some(held) = self.held.lock().expect("lock state").take() else { return };
        if let Err(e) =
            self.vault.write(LOCK, &self.lock_value(0), Precondition::Matches(held)).await
        {
            tracing::warn!(error = %e, "cannot release the migration lock (it expires on its own)");
        }
    }

    /// Runs `work` holding the lock.
    async fn locked<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, MigrateError>>,
    ) -> Result<T, MigrateError> {
        self.lock().await?;
        let done = work.await;
        self.unlock().await;
        done
    }

    /// The migration files, checked against the history: every applied one unchanged and
    /// present; none pending below the last applied. Returns the pending ones.
    fn pending<'f>(
        &self,
        files: &'f [MigrationFile],
        history: &History,
    ) -> Result<Vec<&'f MigrationFile>, MigrateError> {
        for applied in &history.applied {
            let Some(file) = files.iter().find(|f| f.migration.version == applied.version) else {
                return Err(MigrateError::MissingFile {
                    version: applied.version,
                    name: applied.name.clone(),
                    dir: self.dir.display().to_string(),
                });
            };
            if file.checksum != applied.checksum {
                return Err(MigrateError::ChecksumChanged {
                    path: file.path.display().to_string(),
                });
            }
        }
        let last = history.applied.iter().map(|a| a.version).max().unwrap_or(0);
        let pending: Vec<&MigrationFile> = files
            .iter()
            .filter(|f| !history.applied.iter().any(|a| a.version == f.migration.version))
            .collect();
        if let Some(early) = pending.iter().find(|f| f.migration.version < last) {
            return Err(MigrateError::OutOfOrder {
                path: early.path.display().to_string(),
                last_applied: last,
            });
        }
        Ok(pending)
    }

    fn refuse_dirty(history: &History) -> Result<(), MigrateError> {
        match &history.dirty {
            Some(d) => Err(MigrateError::Dirty {
                version: d.version,
                direction: d.direction.clone(),
                task: d.task.clone(),
                error: d.error.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Where things stand.
    pub async fn status(&self) -> Result<Status, MigrateError> {
        let files = files::load_all(&self.dir)?;
        let (history, _) = self.history().await?;
        let pending = self.pending(&files, &history)?;
        Ok(Status {
            pending: pending
                .iter()
                .map(|f| (f.migration.version, f.migration.name.clone()))
                .collect(),
            applied: history.applied,
            dirty: history.dirty,
        })
    }

    /// The pending migrations, as `apply` would run them.
    pub async fn plan(&self) -> Result<Vec<Migration>, MigrateError> {
        let files = files::load_all(&self.dir)?;
        let (history, _) = self.history().await?;
        Self::refuse_dirty(&history)?;
        Ok(self.pending(&files, &history)?.into_iter().map(|f| f.migration.clone()).collect())
    }

    /// Applies every pending migration in order; returns the versions applied.
    pub async fn apply(&self) -> Result<Vec<u32>, MigrateError> {
        self.locked(async {
            let files = files::load_all(&self.dir)?;
            let (mut history, mut at) = self.history().await?;
            Self::refuse_dirty(&history)?;
            let mut done = Vec::new();
            for file in self.pending(&files, &history)? {
                let m = &file.migration;
                self.run_tasks(&m.up, m.version, "up", &mut history, &mut at).await?;
                history.applied.push(Applied {
                    version: m.version,
                    name: m.name.clone(),
                    checksum: file.checksum.clone(),
                    applied_at: now(),
                });
                self.renew().await?;
                self.save(&history, &mut at).await.map_err(|e| MigrateError::NotRecorded {
                    version: m.version,
                    done: "applied",
                    error: e.to_string(),
                })?;
                done.push(m.version);
            }
            Ok(done)
        })
        .await
    }

    /// Rolls back applied migrations above `to` (default: the last one), newest first. Down
    /// tasks that remove things (disabling an engine drops its data) need
    /// `allow_destructive`.
    pub async fn rollback(
        &self,
        to: Option<u32>,
        allow_destructive: bool,
    ) -> Result<Vec<u32>, MigrateError> {
        self.locked(async {
            let files = files::load_all(&self.dir)?;
            let (mut history, mut at) = self.history().await?;
            Self::refuse_dirty(&history)?;
            self.pending(&files, &history)?;
            let floor = match to {
                Some(v) => v,
                None => history.applied.iter().rev().nth(1).map_or(0, |a| a.version),
            };
            let destructive: Vec<String> = files
                .iter()
                .filter(|f| f.migration.version > floor)
                .filter(|f| history.applied.iter().any(|a| a.version == f.migration.version))
                .flat_map(|f| f.migration.down.iter().filter(|t| t.is_destructive()))
                .map(Task::describe)
                .collect();
            if !destructive.is_empty() && !allow_destructive {
                return Err(MigrateError::Destructive {
                    what: "rolling back",
                    tasks: destructive.join("; "),
                    to: "",
                });
            }
            let mut done = Vec::new();
            while let Some(last) = history.applied.last().filter(|a| a.version > floor).cloned() {
                let file = files
                    .iter()
                    .find(|f| f.migration.version == last.version)
                    .expect("pending() checked every applied file exists");
                self.run_tasks(&file.migration.down, last.version, "down", &mut history, &mut at)
                    .await?;
                history.applied.pop();
                self.renew().await?;
                self.save(&history, &mut at).await.map_err(|e| MigrateError::NotRecorded {
                    version: last.version,
                    done: "rolled back",
                    error: e.to_string(),
                })?;
                done.push(last.version);
            }
            Ok(done)
        })
        .await
    }

    /// Clears the dirty flag (a human fixed Vault); returns what it said.
    pub async fn repair(&self) -> Result<Option<Dirty>, MigrateError> {
        self.locked(async {
            let (mut history, mut at) = self.history().await?;
            let cleared = history.dirty.take();
            if cleared.is_some() {
                self.save(&history, &mut at).await?;
            }
            Ok(cleared)
        })
        .await
    }

    async fn run_tasks(
        &self,
        tasks: &[Task],
        version: u32,
        direction: &str,
        history: &mut History,
        at: &mut Option<Version>,
    ) -> Result<(), MigrateError> {
        for (i, task) in tasks.iter().enumerate() {
            self.renew().await?;
            tracing::info!(version, direction, task = %task.describe(), "running");
            if let Err(e) = crate::vault::run(&self.client, task, self.env).await {
                let what = format!("{} ({})", i + 1, task.describe());
                history.dirty = Some(Dirty {
                    version,
                    direction: direction.to_string(),
                    task: what.clone(),
                    error: e.to_string(),
                });
                let marked = match self.save(history, at).await {
                    Ok(()) => "Vault is marked dirty".to_string(),
                    Err(save) => format!("and marking Vault dirty failed too: {save}"),
                };
                return Err(MigrateError::TaskFailed {
                    version,
                    direction: direction.to_string(),
                    task: what,
                    error: e.to_string(),
                    marked,
                });
            }
        }
        Ok(())
    }

    /// Writes the next migration for `schema`, or `Ok(None)` when Vault already matches.
    /// Removals (disable, delete policy) need `allow_destructive`.
    pub async fn generate(
        &self,
        schema: &Schema,
        name: &str,
        allow_destructive: bool,
    ) -> Result<Option<PathBuf>, MigrateError> {
        let files = files::load_all(&self.dir)?;
        let last = Schema::from_map(files::last_known(&files)).map_err(|m| {
            MigrateError::file(&files.last().map_or(self.dir.clone(), |f| f.path.clone()), m)
        })?;
        let mut offline = false;
        let as_written = |name: &str| Some(format!("${{{name}}}"));
        let current = match self.history().await {
            Ok((history, _)) => {
                if let Some(next) = self.pending(&files, &history)?.first() {
                    return Err(MigrateError::NotApplied { path: next.path.display().to_string() });
                }
                crate::vault::current(&self.client, &[schema, &last]).await?
            }
            Err(MigrateError::Vault(e)) if e.kind == ErrorKind::Unavailable => {
                tracing::warn!(error = %e, "Vault unreachable: comparing with the last known state");
                offline = true;
                current_from(&last, &as_written)?
            }
            Err(e) => return Err(e),
        };
        // Offline, both sides stay as written: no value from the environment can end up in a
        // down task.
        let env: &(dyn Fn(&str) -> Option<String> + Sync) =
            if offline { &as_written } else { self.env };
        let generated = generate(schema, &last, &current, env).map_err(MigrateError::Refused)?;
        if generated.up.is_empty() {
            return Ok(None);
        }
        let destructive: Vec<String> =
            generated.up.iter().filter(|t| t.is_destructive()).map(Task::describe).collect();
        if !destructive.is_empty() && !allow_destructive {
            return Err(MigrateError::Destructive {
                what: "the schema",
                tasks: destructive.join("; "),
                to: " to generate that",
            });
        }
        let version = files.last().map_or(1, |f| f.migration.version + 1);
        let migration = Migration {
            version,
            name: files::file_name_part(name),
            up: generated.up,
            down: generated.down,
            desired_state: schema.raw.clone(),
        };
        Ok(Some(files::write_next(&self.dir, &migration)?))
    }
}

/// What Vault would hold if it matched `schema` exactly (used while Vault is unreachable).
fn current_from(
    schema: &Schema,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<Current, MigrateError> {
    let mut current = Current::default();
    for resource in schema.resources.values() {
        let expanded = |m: &Map<String, Value>| -> Result<Map<String, Value>, MigrateError> {
            match expand(&Value::Object(m.clone()), env)? {
                Value::Object(m) => Ok(m),
                _ => unreachable!("a map expands to a map"),
            }
        };
        match resource {
            Resource::Mount { path, spec } => {
                let mut spec = expanded(spec)?;
                let options =
                    spec.get("options").and_then(Value::as_object).cloned().unwrap_or_default();
                let (kind, options) =
                    mount_type(spec["type"].as_str().unwrap_or_default(), &options);
                spec.insert("type".into(), json!(kind));
                spec.insert("options".into(), Value::Object(options));
                current.mounts.insert(format!("{path}/"), Value::Object(spec));
            }
            Resource::Auth { path, spec } => {
                current.auths.insert(format!("{path}/"), Value::Object(expanded(spec)?));
            }
            Resource::Policy { name, text } => {
                current.policies.insert(name.clone(), Some(text.clone()));
            }
            Resource::Data { path, data } => {
                current.data.insert(path.clone(), Some(expanded(data)?));
            }
        }
    }
    Ok(current)
}
