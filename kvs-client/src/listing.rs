//! Listing and snapshots.
//!
//! A listing walks the store's stripes in order. A stripe's keys are read
//! directly under its sequence counter (a validated copy, see
//! `kvs_core::store::read::StoreView::stripe_keys`), or, when writers keep
//! it busy, by a worker into a staging buffer; they are sorted, and each
//! value is then read like any GET. So an entry present for the whole
//! listing is returned exactly once, with a value and version that belong
//! together; the listing is not one point in time (a backup is). The
//! cursor is the stripe and the last key returned.
//!
//! A backup is one request: the server writes the snapshot into its
//! backup directory and answers with the path.

use crate::client::{decode_value, KVSClient};
use crate::conn::Deadline;
use crate::error::{ClientError, Result};
use kvs_core::codec::Codec;
use kvs_core::protocol::{OpCode, StatusCode, MORE};
use std::fmt;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Entries of a page when the caller asks for 0.
pub const DEFAULT_PAGE: usize = 1000;

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedEntry<K, V> {
    /// The key.
    pub key: K,
    /// The value.
    pub value: V,
    /// The entry's version.
    pub version: u64,
    /// Last modification, unix nanoseconds.
    pub modified_ns: u64,
    /// When the entry expires, unix nanoseconds (0: never).
    pub deadline_ns: u64,
}

/// Where a listing resumes: a stripe and the last key returned from it.
///
/// Printed and parsed as hex (the stripe in 8 digits, then the key's
/// bytes), for `?cursor=` in URLs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListCursor {
    stripe: u32,
    after: Vec<u8>,
}

impl fmt::Display for ListCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.stripe)?;
        for b in &self.after {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl FromStr for ListCursor {
    type Err = ClientError;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || ClientError::InvalidArgument(format!("{s:?} is not a listing cursor"));
        if s.len() < 8 || s.len() % 2 != 0 || !s.is_ascii() {
            return Err(bad());
        }
        let stripe = u32::from_str_radix(&s[..8], 16).map_err(|_| bad())?;
        let after = (8..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| bad()))
            .collect::<Result<Vec<u8>>>()?;
        Ok(Self { stripe, after })
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage<K, V> {
    /// The entries: stripe by stripe, keys in byte order within a stripe.
    pub entries: Vec<ListedEntry<K, V>>,
    /// Where the next page starts; `None` when the listing is complete.
    pub next: Option<ListCursor>,
}

/// What a snapshot wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupInfo {
    /// The file written, as the server names it (in its backup directory).
    pub path: PathBuf,
    /// Entries in it.
    pub entries: u64,
    /// The store's global version at the snapshot.
    pub version: u64,
    /// Bytes of the file.
    pub bytes: u64,
}

/// Default timeout of a backup (writing a large store takes a while).
pub const BACKUP_TIMEOUT: Duration = Duration::from_secs(120);

/// Parses a worker's key records: length (8 bytes), the key padded to 8.
fn parse_keys(data: &[u8], count: usize, out: &mut Vec<Vec<u8>>) -> Result<()> {
    let bad = || ClientError::Protocol("a garbled listing page".into());
    let mut at = 0usize;
    for _ in 0..count {
        let len = data
            .get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
            .ok_or_else(bad)? as usize;
        let end = (at + 8).checked_add(len).ok_or_else(bad)?;
        let key = data.get(at + 8..end).ok_or_else(bad)?;
        out.push(key.to_vec());
        at = (at + 8).saturating_add(len.div_ceil(8) * 8);
    }
    Ok(())
}

impl<K: Codec, V: Codec> KVSClient<K, V> {
    /// The keys of stripe `stripe`, sorted: read directly, or by a worker.
    fn stripe_keys(&self, stripe: u32, timeout: Duration) -> Result<Vec<Vec<u8>>> {
        if let Some(view) = self.region().store_view() {
            if let Some(mut keys) = view.stripe_keys(u64::from(stripe)) {
                keys.sort_unstable();
                return Ok(keys);
            }
        }
        let deadline = Deadline::after(timeout);
        let mut keys = Vec::new();
        let mut after = Vec::new();
        loop {
            let answer = self.conn.call_staged(
                OpCode::ListPage,
                &after,
                None,
                u64::from(stripe),
                &deadline,
                true,
            )?;
            match crate::conn::check_status(OpCode::ListPage, &answer.response)? {
                StatusCode::Ok => {}
                s => return Err(ClientError::Protocol(format!("unexpected {s:?} for list"))),
            }
            let before = keys.len();
            parse_keys(&answer.value, answer.response.aux as usize, &mut keys)?;
            if answer.response.flags & MORE == 0 || keys.len() == before {
                break;
            }
            after = keys.last().cloned().unwrap_or_default();
        }
        keys.sort_unstable();
        keys.dedup();
        Ok(keys)
    }

    /// One page of the entries whose key bytes start with `prefix`: up to
    /// `limit` entries (0: [`DEFAULT_PAGE`]), from `cursor` (`None`: the
    /// beginning). Read directly; see the module docs for what a listing
    /// promises.
    ///
    /// # Errors
    ///
    /// [`ClientError::InvalidArgument`] for a prefix longer than a key or a
    /// cursor of another store, [`ClientError::Decode`] for an entry that is
    /// not a `K`/`V`, and the errors of requests when a stripe is busy.
    pub fn list_page(
        &self,
        prefix: &[u8],
        cursor: Option<ListCursor>,
        limit: usize,
    ) -> Result<ListPage<K, V>> {
        let (max_key, _) = self.limits();
        if prefix.len() as u64 > max_key {
            return Err(ClientError::InvalidArgument(format!(
                "a listing prefix is at most {max_key} bytes (the largest key), got {}",
                prefix.len()
            )));
        }
        let limit = if limit == 0 { DEFAULT_PAGE } else { limit };
        let stripes = self.region().info().stripes;
        let (mut stripe, mut after) = match cursor {
            Some(c) if u64::from(c.stripe) < stripes => (c.stripe, c.after),
            Some(c) => {
                return Err(ClientError::InvalidArgument(format!(
                    "cursor {c} names stripe {} of a store with {stripes}",
                    c.stripe
                )))
            }
            None => (0, Vec::new()),
        };
        let timeout = self.options().timeout;
        let mut entries = Vec::new();
        while u64::from(stripe) < stripes {
            for key in self.stripe_keys(stripe, timeout)? {
                if !key.starts_with(prefix) || (!after.is_empty() && key <= after) {
                    continue;
                }
                if entries.len() == limit {
                    return Ok(ListPage {
                        entries,
                        next: Some(ListCursor { stripe, after }),
                    });
                }
                // Deleted since the keys were read: skip it.
                if let Some(e) = self.conn.get(&key, timeout)? {
                    let v = decode_value::<V>(e)?;
                    entries.push(ListedEntry {
                        key: K::decode(&key).map_err(ClientError::Decode)?,
                        value: v.value,
                        version: v.version,
                        modified_ns: v.modified_ns,
                        deadline_ns: v.deadline_ns,
                    });
                    after = key;
                }
            }
            stripe += 1;
            after = Vec::new();
        }
        Ok(ListPage {
            entries,
            next: None,
        })
    }

    /// Every entry whose key bytes start with `prefix`, page by page.
    pub fn list(&self, prefix: &[u8]) -> ListIter<'_, K, V> {
        ListIter {
            client: self,
            prefix: prefix.to_vec(),
            page: Vec::new().into_iter(),
            next: None,
            done: false,
        }
    }

    /// Asks the server to write a point-in-time snapshot named `name` into
    /// its backup directory (`kvs_server --backup-dir`). `name` is a plain
    /// file name (no `/`, no leading `.`): the server never writes where a
    /// client says, only into the directory its operator chose. The file
    /// is written atomically (a crash leaves the previous one) with the
    /// region's mode.
    ///
    /// # Errors
    ///
    /// [`ClientError::InvalidArgument`] for a name that is not a plain file
    /// name; [`ClientError::ServerFailed`] with the server's reason (no
    /// backup directory, say), and the errors of any request.
    pub fn backup(&self, name: &str) -> Result<BackupInfo> {
        self.backup_timeout(name, BACKUP_TIMEOUT)
    }

    /// [`KVSClient::backup`] with an explicit timeout.
    ///
    /// # Errors
    ///
    /// As [`KVSClient::backup`].
    pub fn backup_timeout(&self, name: &str, timeout: Duration) -> Result<BackupInfo> {
        kvs_core::secure_fs::check_file_name(name).map_err(ClientError::InvalidArgument)?;
        let deadline = Deadline::after(timeout);
        let answer = self
            .conn
            .call(OpCode::Backup, name.as_bytes(), None, 0, &deadline)?;
        let r = answer.response;
        match r.status_code() {
            Ok(StatusCode::Ok) => Ok(BackupInfo {
                path: PathBuf::from(std::ffi::OsString::from_vec(answer.value)),
                entries: r.modified_ns,
                version: r.version,
                bytes: r.aux64,
            }),
            Ok(StatusCode::Failed) => Err(ClientError::ServerFailed(
                String::from_utf8_lossy(&answer.value).into_owned(),
            )),
            Ok(s) => Err(ClientError::Protocol(format!(
                "unexpected {s:?} for backup"
            ))),
            Err(e) => Err(ClientError::Protocol(e.to_string())),
        }
    }
}

/// Iterator over a listing, fetching a page at a time.
pub struct ListIter<'c, K, V> {
    client: &'c KVSClient<K, V>,
    prefix: Vec<u8>,
    page: std::vec::IntoIter<ListedEntry<K, V>>,
    next: Option<ListCursor>,
    done: bool,
}

impl<K, V> fmt::Debug for ListIter<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListIter")
            .field("next", &self.next)
            .field("done", &self.done)
            .finish()
    }
}

impl<K: Codec, V: Codec> Iterator for ListIter<'_, K, V> {
    type Item = Result<ListedEntry<K, V>>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(e) = self.page.next() {
                return Some(Ok(e));
            }
            if self.done {
                return None;
            }
            match self.client.list_page(&self.prefix, self.next.take(), 0) {
                Ok(page) => {
                    self.done = page.next.is_none();
                    self.next = page.next;
                    self.page = page.entries.into_iter();
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_print_and_parse_back() {
        let c = ListCursor {
            stripe: 17,
            after: b"key\x00\xff".to_vec(),
        };
        let s = c.to_string();
        assert_eq!(s, "000000116b657900ff");
        assert_eq!(s.parse::<ListCursor>().unwrap(), c);
        for bad in ["", "123", "0000001g", "000000116b6", "zz000000"] {
            assert!(bad.parse::<ListCursor>().is_err(), "{bad}");
        }
    }

    #[test]
    fn worker_key_records_parse_and_garbage_is_an_error() {
        let mut data = Vec::new();
        for k in [&b"a"[..], b"longer key"] {
            data.extend_from_slice(&(k.len() as u64).to_le_bytes());
            data.extend_from_slice(k);
            data.resize(data.len().div_ceil(8) * 8, 0);
        }
        let mut out = Vec::new();
        parse_keys(&data, 2, &mut out).unwrap();
        assert_eq!(out, vec![b"a".to_vec(), b"longer key".to_vec()]);
        let mut out = Vec::new();
        assert!(parse_keys(&data, 3, &mut out).is_err());
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(&[0; 8]);
        assert!(parse_keys(&huge, 1, &mut Vec::new()).is_err());
    }
}
