//! Listing and snapshots: requests whose results travel through a bulk
//! buffer in the region (see `kvs_core::bulk` for why).

use crate::client::{Deadline, KVSClient};
use crate::error::{ClientError, Result};
use kvs_core::bulk::{BulkClaim, BulkParams, BulkTable, ListRecord, PREFIX_MAX};
use kvs_core::protocol::{OpCode, Response, StatusCode};
use std::fmt;
use std::hash::Hash;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// One entry of a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListedEntry<K, V> {
    /// The key.
    pub key: K,
    /// The value.
    pub value: V,
    /// The entry's version.
    pub version: u64,
    /// Last modification, unix nanoseconds.
    pub modified_ns: u64,
}

/// Where a listing resumes; opaque, valid while the server runs.
///
/// Printed and parsed as 16 hex digits, for `?cursor=` in URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListCursor(u64);

impl fmt::Display for ListCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl FromStr for ListCursor {
    type Err = ClientError;

    fn from_str(s: &str) -> Result<Self> {
        u64::from_str_radix(s, 16)
            .map(ListCursor)
            .map_err(|_| ClientError::InvalidArgument(format!("{s:?} is not a listing cursor")))
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage<K, V> {
    /// The entries, in scan order.
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

impl<K, V> KVSClient<K, V>
where
    K: bytemuck::Pod + Eq + Hash,
    V: bytemuck::Pod,
{
    /// One page of the entries whose key bytes start with `prefix`: up to
    /// `limit` entries (0: as many as fit one bulk buffer), from `cursor`
    /// (`None`: the beginning).
    ///
    /// Entries present for the whole listing are returned exactly once; the
    /// server holds one stripe's lock at a time, so writers are never held
    /// up for long. For text keys the key bytes are the text.
    ///
    /// # Errors
    ///
    /// [`ClientError::InvalidArgument`] for a prefix over 64 bytes, no free
    /// bulk buffer, and the errors of any request.
    pub fn list_page(
        &self,
        prefix: &[u8],
        cursor: Option<ListCursor>,
        limit: usize,
    ) -> Result<ListPage<K, V>> {
        if prefix.len() > PREFIX_MAX {
            return Err(ClientError::InvalidArgument(format!(
                "a listing prefix is at most {PREFIX_MAX} bytes, got {}",
                prefix.len()
            )));
        }
        let mut params = bytemuck::Zeroable::zeroed();
        let p: &mut BulkParams = &mut params;
        p.prefix[..prefix.len()].copy_from_slice(prefix);
        p.prefix_len = prefix.len() as u32;
        p.limit = limit.min(u32::MAX as usize) as u32;
        if let Some(c) = cursor {
            p.cursor = c.0;
            p.has_cursor = 1;
        }
        let timeout = self.options().timeout;
        self.bulk_request(OpCode::ListPage, &params, timeout, |bulk, claim, resp| {
            check_ok(OpCode::ListPage, &resp, bulk, claim)?;
            let result = bulk.result(claim);
            let records: Vec<ListRecord<K, V>> =
                bulk.read_list_records(claim, result.count as usize);
            Ok(ListPage {
                entries: records
                    .into_iter()
                    .map(|r| ListedEntry {
                        key: r.key,
                        value: r.value,
                        version: r.version,
                        modified_ns: r.modified_ns,
                    })
                    .collect(),
                next: (result.more != 0).then_some(ListCursor(result.next_cursor)),
            })
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
        let bytes = name.as_bytes();
        let mut params: BulkParams = bytemuck::Zeroable::zeroed();
        params.path[..bytes.len()].copy_from_slice(bytes);
        params.path_len = bytes.len() as u32;
        self.bulk_request(OpCode::Backup, &params, timeout, |bulk, claim, resp| {
            check_ok(OpCode::Backup, &resp, bulk, claim)?;
            let r = bulk.result(claim);
            let written = bulk.read_bytes(claim, r.count as usize);
            Ok(BackupInfo {
                path: PathBuf::from(std::ffi::OsString::from_vec(written)),
                entries: r.entries,
                version: r.version,
                bytes: r.bytes,
            })
        })
    }

    /// Claims a bulk buffer, sends `op` with it, and hands the answer to
    /// `read` while the buffer is still ours.
    fn bulk_request<R>(
        &self,
        op: OpCode,
        params: &BulkParams,
        timeout: Duration,
        read: impl FnOnce(&BulkTable<'_>, &BulkClaim, Response<V>) -> Result<R>,
    ) -> Result<R> {
        let bulk = self.region().bulk();
        let deadline = Deadline::after(timeout);
        let claim_until = Instant::now() + Duration::from_millis(200).min(timeout);
        let claim = loop {
            if let Some(c) = bulk.claim(self.registration()) {
                break c;
            }
            if Instant::now() >= claim_until {
                return Err(ClientError::NoBulkBuffer);
            }
            self.region().poke_housekeeper();
            std::thread::sleep(Duration::from_millis(1));
        };
        let submitted = self.submit_with(op, &K::zeroed(), None, claim.index, &deadline, |slot| {
            bulk.prepare(&claim, params, slot.index, slot.generation)
        });
        let slot = match submitted {
            Ok(s) => s,
            Err(e) => {
                bulk.release(&claim);
                return Err(e);
            }
        };
        match self.wait_claim(op, &slot, &deadline) {
            Ok(resp) => {
                let out = read(&bulk, &claim, resp);
                bulk.release(&claim);
                out
            }
            Err(e) => {
                // The server may still write into the buffer: leave it to the
                // housekeeper, which frees it once the slot has moved on.
                bulk.abandon(&claim);
                Err(e)
            }
        }
    }
}

fn check_ok<V>(
    op: OpCode,
    resp: &Response<V>,
    bulk: &BulkTable<'_>,
    claim: &BulkClaim,
) -> Result<()> {
    match resp.status_code() {
        Ok(StatusCode::Ok) => Ok(()),
        Ok(StatusCode::Failed) => {
            let n = bulk.result(claim).count as usize;
            let msg = String::from_utf8_lossy(&bulk.read_bytes(claim, n)).into_owned();
            Err(ClientError::ServerFailed(msg))
        }
        Ok(s) => Err(ClientError::Protocol(format!(
            "unexpected {s:?} for {}",
            op.name()
        ))),
        Err(e) => Err(ClientError::Protocol(e.to_string())),
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

impl<K, V> Iterator for ListIter<'_, K, V>
where
    K: bytemuck::Pod + Eq + Hash,
    V: bytemuck::Pod,
{
    type Item = Result<ListedEntry<K, V>>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(e) = self.page.next() {
                return Some(Ok(e));
            }
            if self.done {
                return None;
            }
            match self.client.list_page(&self.prefix, self.next, 0) {
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
