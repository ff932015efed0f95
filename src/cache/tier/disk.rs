//! `kind = "disk"`: one record file per key in a directory, found again
//! after a restart.
//!
//! This is the layout nginx's cache has run on for twenty years: a file
//! per key, named by a hash of the key, written to a temporary file and
//! renamed into place (atomic: a reader sees the old record or the new
//! one, never half of one), and an index in memory of what is on disk
//! (key, tags, size, last use) for the byte bound, purges and the
//! gauges. At start the index is rebuilt in the background from each
//! record's header and head; no body is read. Until it is complete,
//! lookups still find records by their file name, and purges wait for it.
//!
//! Beyond `max_size` the least recently used records go (LRU by last hit
//! or store; after a restart, by the files' modification times).
//!
//! Every file operation runs on the tier runtime's blocking pool. Bodies
//! above the memory tier's `max_object_size` are streamed from the file
//! block by block ([`FileBody`]), and written as they arrive
//! ([`DiskSpill`]): never held whole.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{mpsc, watch};

use super::record::{self, Header, Kind, RecordError, BLOCK, HEADER_LEN};
use super::{
    runtime, BodySource, Fetched, SpillWriter, Streamed, Tier, TierError, TierFuture, TierMetrics,
    TierStats,
};
use crate::body::{BoxError, ProxyBody};
use crate::cache::purge::Target;
use crate::cache::store::{Entry, Object};
use crate::config::DiskConfig;

/// Record files live under `<path>/v1/<2 hex>/<32 hex>`; a new layout
/// gets a new directory rather than misreading the old one.
const LAYOUT: &str = "v1";
const TMP: &str = "tmp";
/// Bytes gathered before a spill writes to its file.
const WRITE_CHUNK: usize = 1 << 20;

/// The disk tier.
pub(crate) struct DiskTier {
    /// Itself, for the blocking tasks that outlive a borrow.
    me: Weak<DiskTier>,
    records: PathBuf,
    tmp: PathBuf,
    /// Bodies up to this are read whole (and promoted to memory).
    whole: u64,
    max_size: u64,
    index: Mutex<Index>,
    /// `true` once the start-up scan has indexed every record.
    ready: watch::Receiver<bool>,
    metrics: TierMetrics,
}

impl std::fmt::Debug for DiskTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskTier")
            .field("records", &self.records)
            .field("max_size", &self.max_size)
            .finish_non_exhaustive()
    }
}

/// What is on disk, by key hash.
#[derive(Default)]
struct Index {
    records: HashMap<u128, Meta>,
    /// Last use -> key hash, oldest first.
    lru: BTreeMap<u64, u128>,
    clock: u64,
    bytes: u64,
}

struct Meta {
    key: Box<str>,
    /// A response's tags; `None` for a `Vary` marker.
    tags: Option<Box<[Box<str>]>>,
    size: u64,
    used: u64,
}

impl Index {
    fn insert(&mut self, hash: u128, key: &str, tags: Option<Box<[Box<str>]>>, size: u64) {
        self.forget(hash);
        self.clock += 1;
        self.lru.insert(self.clock, hash);
        self.bytes += size;
        self.records.insert(
            hash,
            Meta {
                key: key.into(),
                tags,
                size,
                used: self.clock,
            },
        );
    }

    fn forget(&mut self, hash: u128) -> Option<Meta> {
        let meta = self.records.remove(&hash)?;
        self.lru.remove(&meta.used);
        self.bytes = self.bytes.saturating_sub(meta.size);
        Some(meta)
    }

    fn touch(&mut self, hash: u128) {
        if let Some(meta) = self.records.get_mut(&hash) {
            self.lru.remove(&meta.used);
            self.clock += 1;
            meta.used = self.clock;
            self.lru.insert(self.clock, hash);
        }
    }
}

fn hash(key: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(key.as_bytes())
}

impl DiskTier {
    /// Opens (creating) the directory and starts indexing what it holds.
    pub(crate) fn open(
        config: &DiskConfig,
        whole: u64,
        metrics: TierMetrics,
    ) -> Result<Arc<DiskTier>, TierError> {
        let records = config.path.join(LAYOUT);
        fs::create_dir_all(&records)?;
        clear_tmp(&config.path.join(TMP));
        // Each process writes in a directory of its own: during an upgrade
        // in place the old and the new process share `path`.
        let tmp = config.path.join(TMP).join(std::process::id().to_string());
        fs::create_dir_all(&tmp)?;
        let (done, ready) = watch::channel(false);
        let tier = Arc::new_cyclic(|me| DiskTier {
            me: me.clone(),
            records,
            tmp,
            whole,
            max_size: config.max_size,
            index: Mutex::default(),
            ready,
            metrics,
        });
        let scanning = tier.clone();
        runtime().spawn_blocking(move || {
            let started = std::time::Instant::now();
            scanning.scan();
            let stats = scanning.stats();
            tracing::info!(
                path = %scanning.records.display(),
                records = stats.objects,
                bytes = stats.bytes,
                ms = started.elapsed().as_millis() as u64,
                "disk cache indexed"
            );
            let _ = done.send(true);
        });
        Ok(tier)
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path_of(&self, hash: u128) -> PathBuf {
        let name = format!("{hash:032x}");
        self.records.join(&name[..2]).join(name)
    }

    /// Indexes every record from its header and head (oldest use first, by
    /// modification time); bad ones are removed.
    fn scan(&self) {
        let mut found = Vec::new();
        let Ok(shards) = fs::read_dir(&self.records) else {
            return;
        };
        for shard in shards.flatten() {
            let Ok(files) = fs::read_dir(shard.path()) else {
                continue;
            };
            for file in files.flatten() {
                let path = file.path();
                match read_meta(&path) {
                    Ok((key, tags, size, modified)) => found.push((modified, key, tags, size)),
                    Err(e) => {
                        self.metrics.failed(&e);
                        tracing::debug!(path = %path.display(), error = %e, "removing a bad cache record");
                        let _ = fs::remove_file(&path);
                    }
                }
            }
        }
        found.sort_by_key(|(modified, ..)| *modified);
        let mut index = self.lock();
        for (_, key, tags, size) in found {
            let h = hash(&key);
            // A store made while scanning is newer than what was found.
            if !index.records.contains_key(&h) {
                index.insert(h, &key, tags, size);
            }
        }
        self.evict(&mut index);
    }

    /// Removes the least recently used records until the tier is within
    /// `max_size`.
    fn evict(&self, index: &mut Index) {
        while index.bytes > self.max_size {
            let Some((_, h)) = index.lru.pop_first() else {
                break;
            };
            if let Some(meta) = index.records.remove(&h) {
                index.bytes = index.bytes.saturating_sub(meta.size);
                let _ = fs::remove_file(self.path_of(h));
            }
        }
    }

    /// Moves a written record into place and indexes it.
    fn install(
        &self,
        file: tempfile::NamedTempFile,
        key: &str,
        object: &Object,
        size: u64,
    ) -> Result<(), TierError> {
        let h = hash(key);
        let path = self.path_of(h);
        let tags = match object {
            Object::Response(e) => Some(e.tags.clone()),
            Object::Vary { .. } => None,
        };
        let mut index = self.lock();
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        file.persist(&path).map_err(|e| TierError::Io(e.error))?;
        index.insert(h, key, tags, size);
        self.evict(&mut index);
        Ok(())
    }

    /// Removes the record at `path` if it is still the file `opened` (a
    /// newer record put in its place meanwhile stays).
    fn discard(&self, path: &Path, opened: &File, why: &TierError) {
        tracing::debug!(path = %path.display(), error = %why, "removing a bad cache record");
        let same = match (opened.metadata(), fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            _ => false,
        };
        if same {
            let mut index = self.lock();
            let _ = fs::remove_file(path);
            if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                if let Ok(h) = u128::from_str_radix(name, 16) {
                    index.forget(h);
                }
            }
        }
    }

    fn get_blocking(self: &Arc<Self>, key: &str) -> Result<Option<Fetched>, TierError> {
        let h = hash(key);
        let path = self.path_of(h);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match self.read(&file, key) {
            Ok(Some(found)) => {
                self.lock().touch(h);
                Ok(Some(found))
            }
            Ok(None) => Ok(None),
            Err(TierError::Record(e)) => {
                let e = TierError::Record(e);
                self.discard(&path, &file, &e);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// The record in `file`, checked; `None` when it is another key's (a
    /// hash collision).
    fn read(self: &Arc<Self>, file: &File, key: &str) -> Result<Option<Fetched>, TierError> {
        let (header, decoded) = read_head(file)?;
        let len = file.metadata()?.len();
        if len != header.record_len() {
            return Err(RecordError::Truncated.into());
        }
        if decoded.key != key {
            return Ok(None);
        }
        if decoded.body_len <= self.whole {
            let mut stored = vec![
                0u8;
                usize::try_from(record::stored_len(header.body_len))
                    .map_err(|_| RecordError::Truncated)?
            ];
            file.read_exact_at(&mut stored, header.body_offset())?;
            let body = record::read_body(&stored, header.body_len)?;
            let object = record::with_body(decoded, body)?;
            return Ok(Some(Fetched::Object(Arc::new(object))));
        }
        let Object::Response(entry) = decoded.object else {
            return Err(RecordError::Malformed("a Vary marker with a body").into());
        };
        let source = FileSource {
            file: Arc::new(file.try_clone()?),
            body_offset: header.body_offset(),
            body_len: decoded.body_len,
            section_len: header.body_len,
            path: self.path_of(hash(key)),
            tier: self.clone(),
        };
        Ok(Some(Fetched::Streamed(Box::new(Streamed {
            entry,
            length: decoded.body_len,
            body: Arc::new(source),
        }))))
    }

    fn put_blocking(&self, key: &str, object: &Object) -> Result<(), TierError> {
        let bytes = record::encode(key, object);
        let mut file = tempfile::NamedTempFile::new_in(&self.tmp)?;
        file.write_all(&bytes)?;
        self.install(file, key, object, bytes.len() as u64)
    }

    fn remove_blocking(&self, key: &str) -> bool {
        let h = hash(key);
        let mut index = self.lock();
        let known = index.forget(h).is_some();
        let removed = fs::remove_file(self.path_of(h)).is_ok();
        known || removed
    }

    fn purge_blocking(
        &self,
        target: &Target,
        soft: bool,
        now: SystemTime,
    ) -> Result<u64, TierError> {
        let mut index = self.lock();
        let named: Vec<(u128, bool)> = index
            .records
            .iter()
            .filter(|(_, m)| target.names(&m.key, m.tags.as_deref()))
            .map(|(h, m)| (*h, m.tags.is_some()))
            .collect();
        let responses = named.iter().filter(|(_, r)| *r).count() as u64;
        for (h, response) in named {
            let path = self.path_of(h);
            if !soft {
                index.forget(h);
                let _ = fs::remove_file(&path);
            } else if response {
                if let Err(e) = make_stale(&path, now) {
                    // A record that cannot be marked stale must not stay fresh.
                    self.metrics.failed(&e);
                    index.forget(h);
                    let _ = fs::remove_file(&path);
                }
            }
        }
        Ok(responses)
    }
}

/// Removes the leftovers of writes a crash interrupted: the temporary
/// directories of processes no longer running.
fn clear_tmp(tmp: &Path) {
    let Ok(dirs) = fs::read_dir(tmp) else {
        return;
    };
    for dir in dirs.flatten() {
        let running = dir
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
            // A directory named after this process is an earlier one's
            // with the same pid (pid 1 in a container).
            .is_some_and(|pid| {
                pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists()
            });
        if !running {
            let _ = fs::remove_dir_all(dir.path());
        }
    }
}

/// Rewrites a record's header so that it is stale as of `now` (one that
/// already is stays as it is).
fn make_stale(path: &Path, now: SystemTime) -> Result<(), TierError> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let (mut header, decoded) = read_head(&file)?;
    if let Object::Response(e) = &decoded.object {
        let age = e.age(now);
        if age < e.lifetime {
            header.lifetime = age;
            file.write_all_at(&header.encode(), 0)?;
        }
    }
    Ok(())
}

/// A record file's header and decoded head.
fn read_head(file: &File) -> Result<(Header, record::Decoded), TierError> {
    let mut fixed = [0u8; HEADER_LEN];
    read_exact_or_truncated(file, &mut fixed, 0)?;
    let header = Header::decode(&fixed)?;
    let mut head = vec![0u8; header.head_len as usize];
    read_exact_or_truncated(file, &mut head, HEADER_LEN as u64)?;
    let decoded = record::decode_head(&header, &head)?;
    Ok((header, decoded))
}

fn read_exact_or_truncated(file: &File, buf: &mut [u8], at: u64) -> Result<(), TierError> {
    file.read_exact_at(buf, at).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => TierError::Record(RecordError::Truncated),
        _ => TierError::Io(e),
    })
}

/// What the start-up scan keeps of a record: key, tags, size, and when it
/// was written.
type Scanned = (String, Option<Box<[Box<str>]>>, u64, SystemTime);

fn read_meta(path: &Path) -> Result<Scanned, TierError> {
    let file = File::open(path)?;
    let (header, decoded) = read_head(&file)?;
    let meta = file.metadata()?;
    if meta.len() != header.record_len() {
        return Err(RecordError::Truncated.into());
    }
    let tags = match (&decoded.object, header.kind) {
        (Object::Response(e), Kind::Response) => Some(e.tags.clone()),
        _ => None,
    };
    let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    Ok((decoded.key, tags, meta.len(), modified))
}

impl Tier for DiskTier {
    fn get<'a>(&'a self, key: &'a str) -> TierFuture<'a, Option<Fetched>> {
        // The blocking task needs an owned tier (a streamed body's source
        // keeps it).
        let key = key.to_string();
        let me = self.arc();
        Box::pin(async move {
            let me = me?;
            runtime()
                .spawn_blocking(move || me.get_blocking(&key))
                .await
                .map_err(|_| TierError::Closed)?
        })
    }

    fn put<'a>(&'a self, key: &'a str, object: &'a Object) -> TierFuture<'a, ()> {
        Box::pin(async move {
            let me = self.arc()?;
            let (key, object) = (key.to_string(), clone_object(object));
            runtime()
                .spawn_blocking(move || me.put_blocking(&key, &object))
                .await
                .map_err(|_| TierError::Closed)?
        })
    }

    fn remove<'a>(&'a self, key: &'a str) -> TierFuture<'a, bool> {
        Box::pin(async move {
            let me = self.arc()?;
            let key = key.to_string();
            runtime()
                .spawn_blocking(move || me.remove_blocking(&key))
                .await
                .map_err(|_| TierError::Closed)
        })
    }

    fn purge<'a>(&'a self, target: &'a Target, soft: bool, now: SystemTime) -> TierFuture<'a, u64> {
        Box::pin(async move {
            let mut ready = self.ready.clone();
            let _ = ready.wait_for(|r| *r).await;
            let me = self.arc()?;
            let target = target.clone();
            runtime()
                .spawn_blocking(move || me.purge_blocking(&target, soft, now))
                .await
                .map_err(|_| TierError::Closed)?
        })
    }

    fn stats(&self) -> TierStats {
        let index = self.lock();
        TierStats {
            bytes: index.bytes,
            objects: index.records.len() as u64,
        }
    }

    fn spill(&self, key: &str, entry: &Entry) -> Option<Box<dyn SpillWriter>> {
        match self.arc().and_then(|me| DiskSpill::new(me, key, entry)) {
            Ok(s) => Some(Box::new(s)),
            Err(e) => {
                self.metrics.failed(&e);
                None
            }
        }
    }
}

/// Clones an object for a blocking task (bodies are shared, not copied).
fn clone_object(object: &Object) -> Object {
    match object {
        Object::Response(e) => Object::Response(e.clone()),
        Object::Vary { names, id } => Object::Vary {
            names: names.clone(),
            id: *id,
        },
    }
}

impl DiskTier {
    /// This tier as an owned handle, for blocking tasks.
    fn arc(&self) -> Result<Arc<DiskTier>, TierError> {
        self.me.upgrade().ok_or(TierError::Closed)
    }
}

/// A stored body read from its file, block by block, each checked.
#[derive(Debug, Clone)]
struct FileSource {
    file: Arc<File>,
    body_offset: u64,
    /// The identity body's length.
    body_len: u64,
    /// The whole body section's (with copies), for the block layout.
    section_len: u64,
    path: PathBuf,
    tier: Arc<DiskTier>,
}

impl BodySource for FileSource {
    fn open(&self, from: u64, to: u64) -> ProxyBody {
        let (tx, rx) = mpsc::channel(4);
        let source = Arc::new(self.clone());
        let to = to.min(self.body_len);
        runtime().spawn(source.stream(from, to, tx));
        http_body_util::BodyExt::boxed(FileBody {
            rx,
            left: to.saturating_sub(from),
        })
    }
}

impl FileSource {
    /// Sends bytes `from..to`, one checked block read at a time on the
    /// blocking pool; waiting for a slow client holds no thread.
    async fn stream(
        self: Arc<Self>,
        from: u64,
        to: u64,
        tx: mpsc::Sender<Result<Bytes, TierError>>,
    ) {
        let mut pos = from;
        while pos < to {
            let me = self.clone();
            let read = runtime().spawn_blocking(move || me.block(pos, to)).await;
            let piece = match read {
                Ok(Ok(piece)) => piece,
                Ok(Err(e)) => {
                    self.tier.metrics.failed(&e);
                    let (tier, path, file) =
                        (self.tier.clone(), self.path.clone(), self.file.clone());
                    let discarded = runtime().spawn_blocking(move || {
                        tier.discard(&path, &file, &e);
                        e
                    });
                    let e = discarded.await.unwrap_or(TierError::Closed);
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                Err(_) => {
                    let _ = tx.send(Err(TierError::Closed)).await;
                    return;
                }
            };
            pos += piece.len() as u64;
            if tx.send(Ok(piece)).await.is_err() {
                return;
            }
        }
    }

    /// The bytes from `pos` to the end of its block (or `to`), checked.
    fn block(&self, pos: u64, to: u64) -> Result<Bytes, TierError> {
        let i = pos / BLOCK as u64;
        let (start, stored) = record::block_span(i, self.section_len);
        let mut buf = vec![0u8; stored as usize];
        read_exact_or_truncated(&self.file, &mut buf, self.body_offset + start)?;
        let data = record::check_block(&buf)?;
        let skip = (pos - i * BLOCK as u64) as usize;
        let end = ((to - i * BLOCK as u64) as usize).min(data.len());
        data.get(skip..end)
            .filter(|d| !d.is_empty())
            .map(Bytes::copy_from_slice)
            .ok_or(TierError::Record(RecordError::Truncated))
    }
}

/// The client's side of a [`FileSource`] read.
struct FileBody {
    rx: mpsc::Receiver<Result<Bytes, TierError>>,
    left: u64,
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(data))) => {
                self.left = self.left.saturating_sub(data.len() as u64);
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            // The reader stopped before the end: never a short body.
            Poll::Ready(None) => Poll::Ready(Some(Err(Box::new(TierError::Closed)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// A record written as its body arrives: header and head first (rewritten
/// with the final length at commit), then the body in checked blocks.
struct DiskSpill {
    tier: Arc<DiskTier>,
    key: String,
    object: Object,
    file: tempfile::NamedTempFile,
    body: record::BodyWriter,
    pending: Vec<u8>,
}

impl DiskSpill {
    fn new(tier: Arc<DiskTier>, key: &str, entry: &Entry) -> Result<DiskSpill, TierError> {
        let object = Object::Response(Entry {
            body: Bytes::new(),
            copies: Default::default(),
            hit_head: Default::default(),
            ..entry.clone()
        });
        let (header, head) = record::encode_streamed_head(key, &object, 0);
        let mut file = tempfile::NamedTempFile::new_in(&tier.tmp)?;
        file.write_all(&header.encode())?;
        file.write_all(&head)?;
        Ok(DiskSpill {
            tier,
            key: key.to_string(),
            object,
            file,
            body: record::BodyWriter::default(),
            pending: Vec::with_capacity(WRITE_CHUNK + BLOCK),
        })
    }
}

impl SpillWriter for DiskSpill {
    fn write(&mut self, data: &[u8]) -> Result<(), TierError> {
        self.body.push(data, &mut self.pending);
        if self.pending.len() >= WRITE_CHUNK {
            self.file.write_all(&self.pending)?;
            self.pending.clear();
        }
        Ok(())
    }

    fn commit(mut self: Box<Self>) -> Result<(), TierError> {
        self.body.finish(&mut self.pending);
        self.file.write_all(&self.pending)?;
        let (header, head) = record::encode_streamed_head(&self.key, &self.object, self.body.len);
        let f = self.file.as_file();
        f.write_all_at(&header.encode(), 0)?;
        f.write_all_at(&head, HEADER_LEN as u64)?;
        let size = header.record_len();
        let DiskSpill {
            tier,
            key,
            object,
            file,
            ..
        } = *self;
        tier.install(file, &key, &object, size)
    }
}
