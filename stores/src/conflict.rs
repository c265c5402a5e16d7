//! Conditional writes that survive a concurrent writer without overwriting it blindly.
//!
//! A write planned against version `v` fails with [`ErrorKind::Conflict`] when someone else
//! wrote first. The secret is then re-read: if it already holds the desired content (and no
//! stamp is missing) the write is done; otherwise it is written again against the version just
//! seen, so whatever the other writer did was looked at before it is replaced. Given a
//! [`Refresh`], the desired value is read again too, so a write planned before another vss run
//! moved the secret on (an event during a reconcile) never puts an older value back. A delete that
//! conflicts is dropped unless the secret is already gone: someone rewrote it after it was
//! planned for deletion, and that write wins. Either way the newer state stands and the call
//! ends [`Settled::Superseded`]: not an error, and not vss's write any more.

use vss_protocol::{ContentHash, HashKey, SecretValue};

use crate::{ErrorKind, Precondition, SecretStore, Stamp, StoreError, Version};

/// Re-reads after a conflict at most this many times before giving up.
const MAX_REREADS: usize = 3;

/// The desired value of a secret as it is now (`None`: no longer desired).
pub type Fresh = futures_util::future::BoxFuture<'static, Result<Option<SecretValue>, StoreError>>;

/// Reads a secret's desired value again, by its name relative to the job's folder.
pub type Refresh = dyn Fn(String) -> Fresh + Send + Sync;

/// How a conditional write or delete ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// The secret holds the desired content, with this hash, at this version.
    Written(ContentHash, Version),
    /// The secret is gone.
    Deleted,
    /// Someone moved the secret on since the change was planned, and the change no longer
    /// applies (a delete met a rewrite; a write's desired value is gone): left as it is.
    Superseded,
    /// Not attempted: another run (an event's) is changing the secret now, from a newer
    /// view of it.
    Deferred,
}

/// One write: the desired value, its hash, and the stamp to put beside it (if any).
pub struct DesiredWrite<'a> {
    /// The secret's name in the store.
    pub name: &'a str,
    /// The desired value.
    pub value: &'a SecretValue,
    /// Its keyed hash.
    pub hash: &'a ContentHash,
    /// Hash and owner to stamp into the store's metadata (stores without metadata ignore it).
    pub stamp: Option<&'a Stamp>,
}

/// Writes `write` under `pre`; on a conflict re-reads (the secret, and with `refresh` its
/// desired value, asked for with `relative`, its name in the job's folder) and retries as the
/// module describes. `key` hashes what is read. Returns the hash and version written, or
/// [`Settled::Superseded`] when the desired value went away meanwhile.
pub async fn write_resolving_conflicts(
    store: &dyn SecretStore,
    write: DesiredWrite<'_>,
    mut pre: Precondition,
    key: &HashKey,
    refresh: Option<(&Refresh, &str)>,
) -> Result<Settled, StoreError> {
    let mut fresh: Option<SecretValue> = None;
    let mut hash = write.hash.clone();
    let mut stamp = write.stamp.cloned();
    let mut rereads = 0;
    loop {
        let value = fresh.as_ref().unwrap_or(write.value);
        let attempt = match &stamp {
            Some(stamp) => store.write_stamped(write.name, value, pre.clone(), stamp).await,
            None => store.write(write.name, value, pre.clone()).await,
        };
        let conflict = match attempt {
            Err(e) if e.kind == ErrorKind::Conflict && store.capabilities().read_values => e,
            other => return other.map(|version| Settled::Written(hash, version)),
        };
        if rereads == MAX_REREADS {
            return Err(conflict);
        }
        rereads += 1;
        tracing::debug!(store = %store.describe(), secret = %write.name, "write conflict; re-reading");
        if let Some((refresh, relative)) = refresh {
            let Some(now) = refresh(relative.to_string()).await? else {
                tracing::debug!(secret = %write.name, "no longer desired since it was planned");
                return Ok(Settled::Superseded);
            };
            hash = key.hash(&now);
            if let Some(stamp) = &mut stamp {
                stamp.hash = hash.clone();
            }
            fresh = Some(now);
        }
        pre = match store.read(write.name).await? {
            None => Precondition::Absent,
            Some(found) => {
                let needs_stamp = stamp.is_some() && store.capabilities().metadata;
                if !needs_stamp && key.hash(&found.value) == hash {
                    return Ok(Settled::Written(hash, found.version));
                }
                Precondition::Matches(found.version)
            }
        };
    }
}

/// Deletes `name` under `pre`. On a conflict the secret is re-read: gone is
/// [`Settled::Deleted`]; still there means someone rewrote it since it was planned for
/// deletion, and it is left in place ([`Settled::Superseded`]).
pub async fn delete_resolving_conflicts(
    store: &dyn SecretStore,
    name: &str,
    pre: Precondition,
) -> Result<Settled, StoreError> {
    match store.delete(name, pre).await {
        Err(e) if e.kind == ErrorKind::Conflict && store.capabilities().read_values => {
            match store.read(name).await? {
                None => Ok(Settled::Deleted),
                Some(_) => {
                    tracing::debug!(secret = %name, "rewritten since it was planned for deletion");
                    Ok(Settled::Superseded)
                }
            }
        }
        other => other.map(|()| Settled::Deleted),
    }
}
