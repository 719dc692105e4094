//! The secret range cursors are signed with: 32 random bytes kept in db4's own key-value
//! table `_db4_meta`, created on the first open of a database, the same for every handle and
//! process on it. Cursors are HMAC-SHA-256 tagged under it (`range::cursor`).

use crate::backend::{Access, Backend, Connection, run};
use crate::error::{BackendErrorKind, Error, Result};
use crate::value::{Value, ValueRef};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

/// Bytes of the MAC kept in a cursor (of HMAC-SHA-256's 32): 128 bits.
pub(crate) const MAC_BYTES: usize = 16;

/// The per-database secret cursors are signed with.
#[derive(Clone)]
pub(crate) struct CursorKey {
    secret: [u8; 32],
}

impl fmt::Debug for CursorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CursorKey(..)")
    }
}

/// Where the secret is kept: one row of db4's own key-value table.
const META_TABLE: &str = "\"_db4_meta\"";
const SECRET_KEY: &str = "cursor_secret";

impl CursorKey {
    /// The database's secret: read from `_db4_meta`, created there (random, 32 bytes) if the
    /// database has none yet. A database that cannot be written and has none gets a secret
    /// of this handle's own (its cursors then hold only while it is open).
    ///
    /// # Errors
    ///
    /// A backend error, or [`Error::Corrupted`] for a stored secret of the wrong form.
    pub(crate) fn load(backend: &dyn Backend) -> Result<CursorKey> {
        if let Ok(Some(key)) = run(backend, Access::Read, read_secret) {
            return Ok(key);
        }
        match run(backend, Access::Atomic, create_secret) {
            Err(e) if e.backend_kind() == Some(BackendErrorKind::ReadOnly) => Ok(CursorKey { secret: random()? }),
            other => other,
        }
    }

    #[cfg(test)]
    pub(crate) fn fixed(secret: [u8; 32]) -> Self {
        Self { secret }
    }

    /// The secret as hex, to hand to a router that signs cursors for this database's shard
    /// (the protocol's `CursorSecret`, between a Worker and its own Durable Objects).
    pub(crate) fn to_hex(&self) -> String {
        hex_encode(&self.secret)
    }

    /// The key of a secret [`to_hex`](Self::to_hex) wrote; `None` if `text` is not 64 hex
    /// digits.
    pub(crate) fn from_hex(text: &str) -> Option<CursorKey> {
        hex_decode(text).map(|secret| CursorKey { secret })
    }

    /// The MAC of `signed` for `context`, the first [`MAC_BYTES`] of HMAC-SHA-256.
    pub(crate) fn tag(&self, context: &[u8], signed: &[u8]) -> [u8; MAC_BYTES] {
        let full = self.mac(context, signed).finalize().into_bytes();
        let mut tag = [0u8; MAC_BYTES];
        tag.copy_from_slice(&full[..MAC_BYTES]);
        tag
    }

    /// Whether `tag` is the MAC of `signed` for `context` (compared in constant time).
    pub(crate) fn check(&self, context: &[u8], signed: &[u8], tag: &[u8]) -> bool {
        tag.len() == MAC_BYTES && self.mac(context, signed).verify_truncated_left(tag).is_ok()
    }

    fn mac(&self, context: &[u8], signed: &[u8]) -> Hmac<Sha256> {
        // HMAC takes a key of any length: this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret).unwrap_or_else(|_| unreachable!());
        mac.update(&(context.len() as u64).to_le_bytes());
        mac.update(context);
        mac.update(signed);
        mac
    }
}

fn random() -> Result<[u8; 32]> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| {
        Error::Backend(crate::error::BackendError::new(
            BackendErrorKind::Other,
            format!("no randomness for the cursor secret: {e}"),
        ))
    })?;
    Ok(secret)
}

fn read_secret(conn: &dyn Connection) -> Result<Option<CursorKey>> {
    let mut out = None;
    conn.query(
        &format!("SELECT \"value\" FROM {META_TABLE} WHERE \"key\" = ?1"),
        &[Value::Text(SECRET_KEY.to_owned())],
        &mut |row| {
            let ValueRef::Text(hex) = row.get(0)? else {
                return Err(Error::corrupted("_db4_meta", None, "the cursor secret is not text"));
            };
            let secret = hex_decode(hex)
                .ok_or_else(|| Error::corrupted("_db4_meta", None, "the cursor secret is not 64 hex digits"))?;
            out = Some(CursorKey { secret });
            Ok(())
        },
    )?;
    Ok(out)
}

fn create_secret(conn: &dyn Connection) -> Result<CursorKey> {
    conn.execute_ddl(&format!(
        "CREATE TABLE IF NOT EXISTS {META_TABLE} (\"key\" TEXT PRIMARY KEY NOT NULL, \"value\" NOT NULL)"
    ))?;
    // Another process may have created it since: the first secret written wins.
    let secret = random()?;
    conn.execute(
        &format!("INSERT OR IGNORE INTO {META_TABLE} (\"key\", \"value\") VALUES (?1, ?2)"),
        &[Value::Text(SECRET_KEY.to_owned()), Value::Text(hex_encode(&secret))],
    )?;
    read_secret(conn)?.ok_or_else(|| Error::corrupted("_db4_meta", None, "the cursor secret vanished"))
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        out[i] = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}
