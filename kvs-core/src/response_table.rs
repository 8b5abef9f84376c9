//! The response table: slots that carry one request from a client to the
//! server and its answer back.
//!
//! # The slot protocol
//!
//! Each slot has one 64-bit control word packing `generation` (high 32 bits),
//! `owner` (the client's registration index, 24 bits) and `state` (8 bits).
//! Packing them makes every transition a single CAS that checks all three, so
//! a stale or forged reference can never act on a slot that has moved on.
//!
//! ```text
//!          claim           submit (CAS)        begin (CAS)            complete (CAS)
//! Free(g) ──────▶ Claimed(g+1) ──────▶ Pending(g+1) ──────▶ Completing(g+1) ──────▶ Ready(g+1)
//!   ▲   client     │ writes the        │                    │ worker: sole writer      │ take
//!   │              │ request           │ abandon            │ of the answer            │ (client)
//!   │              ▼ release           ▼ (client)           ▼ abandon (client)         │
//!   ├──────────────┘            Abandoned(g+1) ◀────────────┘                          │
//!   │  worker (or housekeeper) frees it │                                              │
//!   └───────────────────────────────────┴──────────────────────────────────────────────┘
//! ```
//!
//! * **claim**: CAS `Free(g) -> Claimed(g+1, owner)`. The new generation goes
//!   into the request, so the answer to an older use of the slot cannot be
//!   taken for this one: the C++ system this grew from picked `task_id % 1024`
//!   with every client starting at 1, so clients overwrote each other's
//!   answers; here two requests can only share a slot and generation after
//!   2^32 reuses of that slot.
//! * **submit**: while the slot is `Claimed` its owner alone writes the
//!   request into it, then CASes `Claimed(g) -> Pending(g)` with Release
//!   ([`SlotTable::mark_pending`]) and pushes the slot's index into the ring.
//!   The CAS, not a blind store, so a slot someone else moved on is never
//!   marked pending.
//! * **begin**: a worker that popped the index CASes `Pending(g) ->
//!   Completing(g)` (Acquire: pairs with the submit's Release, so it sees
//!   the whole request) and from then on is the only writer of the slot's
//!   answer. Whatever index arrives from the ring (a stale one, a duplicate,
//!   a forged one), only the slot's current `Pending` use can be begun, once.
//! * **complete**: the worker writes the answer, tagged with the generation,
//!   and CASes `Completing(g) -> Ready(g)` (Release: pairs with the owner's
//!   Acquire load). If the owner abandoned meanwhile, the CAS fails on
//!   `Abandoned(g)` and the worker frees the slot.
//! * **abandon**: an owner that gives up CASes `Pending(g)` or
//!   `Completing(g)` to `Abandoned(g)` and never reads the slot again; if
//!   the word is already `Ready(g)`, the answer arrived just in time and it
//!   takes it.
//! * **take**: the owner copies the answer out, checks its generation tag,
//!   and stores `Free(g)` with Release, which pairs with the next claimer's
//!   Acquire CAS.
//!
//! So at every moment exactly one party may write each part of a slot: the
//! owner the request (while `Claimed`), one worker the answer (while
//! `Completing`), and no answer is ever written into a slot a worker does
//! not hold. A writer that forges the word (say `Completing -> Free`, so
//! that an honest client claims the slot while a worker is still writing)
//! can at most make the worker's late answer land in the new owner's slot
//! before the new owner's own worker begins; the generation tag then makes
//! the owner refuse it (`Lost`) rather than take it.
//!
//! Claiming is lock-free and O(1) amortised: each client probes from its
//! own hint ([`SlotTable::claim_from`]), so claimers in different processes
//! do not all bump one shared line; after one pass over every slot a claim
//! returns `None` instead of spinning.
//!
//! Waking: each slot has an [`EventCount`]. The owner announces itself
//! (`prepare`) before its last check and sleep; the worker's `SeqCst` CAS to
//! `Ready` followed by `notify` form the Dekker pair that makes a lost
//! wake-up impossible (see [`crate::wait`]).
//!
//! Every index that arrives from the ring is bounds-checked ([`SlotError`]),
//! every state decoded with [`SlotState::try_from`], every request and
//! answer copied out of the slot field by field (never a padding byte)
//! before it is looked at, and a word that is not what the protocol expects
//! is never written to by the server except by CAS from the exact expected
//! value.
//!
//! ```
//! use kvs_core::protocol::{OpCode, Request, Response, StatusCode};
//! use kvs_core::response_table::{Poll, SlotTableBuffer};
//! use kvs_core::wait::SpinParker;
//!
//! let buf = SlotTableBuffer::new(4);
//! let table = buf.table();
//! let claim = table.claim(1).unwrap();
//! let req = Request { op: OpCode::Get as u16, key_len: 3, ..Request::default() };
//! assert!(table.write_request(&claim, &req, b"key", b""));
//! assert!(table.mark_pending(&claim));
//! // ... the server pops the index and answers:
//! let begun = table.begin(claim.index).unwrap();
//! let got = table.read_request(&begun);
//! let mut key = Vec::new();
//! table.data(begun.index()).read_into(0, u64::from(got.key_len), &mut key).unwrap();
//! assert_eq!(key, b"key");
//! table.data(begun.index()).write_bytes(0, b"value", |_| {}).unwrap();
//! let answer = Response { value_len: 5, ..Response::status(StatusCode::Ok) };
//! table.complete(begun, &answer, &SpinParker);
//! let mut value = Vec::new();
//! assert!(matches!(table.poll(&claim, Some(&mut value)), Poll::Ready(r) if r.value_len == 5));
//! assert_eq!(value, b"value");
//! assert_eq!(table.free_count(), 4);
//! ```

use crate::protocol::{Request, Response, INLINE_WORDS, REQUEST_WORDS, RESPONSE_WORDS};
use crate::store::words::Words;
use crate::sync::{AtomicU32, AtomicU64, Ordering};
use crate::wait::{spin_then_yield, EventCount, Parker, SpinPolicy, SLEEP_SLICE};
use crossbeam_utils::CachePadded;
use std::fmt;
use std::time::Instant;

/// The state part of a slot's control word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum SlotState {
    /// Nobody uses the slot.
    Free = 0,
    /// A client owns the slot and is writing its request.
    Claimed = 1,
    /// The request is in the ring, waiting for a worker.
    Pending = 2,
    /// The server wrote the answer; the owner may take it.
    Ready = 3,
    /// The owner gave up; the server frees the slot when it gets there.
    Abandoned = 4,
    /// A worker holds the slot and is writing the answer.
    Completing = 5,
}

impl SlotState {
    /// Every state, in wire order.
    pub const ALL: [SlotState; 6] = [
        SlotState::Free,
        SlotState::Claimed,
        SlotState::Pending,
        SlotState::Ready,
        SlotState::Abandoned,
        SlotState::Completing,
    ];
}

impl TryFrom<u32> for SlotState {
    type Error = u32;

    fn try_from(value: u32) -> Result<Self, u32> {
        SlotState::ALL
            .into_iter()
            .find(|s| *s as u32 == value)
            .ok_or(value)
    }
}

pub use crate::word::MAX_OWNER;

#[inline]
const fn pack(generation: u32, owner: u32, state: SlotState) -> u64 {
    crate::word::pack(generation, owner, state as u32)
}

/// A control word split into its fields; `state` is raw (may be garbage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotWord {
    /// The generation of the slot's current or last use.
    pub generation: u32,
    /// The owner's registration index.
    pub owner: u32,
    /// The raw state; decode with [`SlotState::try_from`].
    pub state: u32,
}

impl SlotWord {
    #[inline]
    fn unpack(word: u64) -> Self {
        let (generation, owner, state) = crate::word::unpack(word);
        Self {
            generation,
            owner,
            state,
        }
    }
}

/// One slot: the control word, the owner's event count, the request and
/// answer headers, and the data area they share (see [`crate::protocol`]).
///
/// ```text
/// offset  size  field
///      0     8  word: generation | owner | state
///      8     8  event count (epoch, waiters)
///     16     8  owner pid (diagnostics only), reserved
///     24    40  request header (5 words)
///     64    40  answer header (5 words)
///    104  1024  data: the request's key and value, then the answer's value
/// ```
#[repr(C)]
#[derive(Debug)]
pub struct Slot {
    /// Generation, owner and state; see the module docs.
    word: AtomicU64,
    /// The owner sleeps on it; the worker notifies it.
    ec: EventCount,
    /// The owner's pid, for diagnostics only (never trusted).
    owner_pid: AtomicU32,
    _reserved: AtomicU32,
    /// Written by the owner while `Claimed`, read by the worker that began it.
    request: [AtomicU64; REQUEST_WORDS],
    /// Written by the worker while `Completing`, read by the owner in `Ready`.
    response: [AtomicU64; RESPONSE_WORDS],
    /// The request's key and value (owner, while `Claimed`), then the
    /// answer's value (worker, while `Completing`).
    data: [AtomicU64; INLINE_WORDS],
}

impl Slot {
    /// Byte offset of the request header within a slot (for tools and tests
    /// that reach into the region).
    pub const REQUEST_OFFSET: usize = std::mem::offset_of!(Slot, request);
    /// Byte offset of the answer header within a slot.
    pub const RESPONSE_OFFSET: usize = std::mem::offset_of!(Slot, response);
    /// Byte offset of the data area within a slot.
    pub const DATA_OFFSET: usize = std::mem::offset_of!(Slot, data);

    fn new() -> Self {
        Self {
            word: AtomicU64::new(0),
            ec: EventCount::new(),
            owner_pid: AtomicU32::new(0),
            _reserved: AtomicU32::new(0),
            request: std::array::from_fn(|_| AtomicU64::new(0)),
            response: std::array::from_fn(|_| AtomicU64::new(0)),
            data: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// Table-wide state (kept for layout stability; claims probe from each
/// client's own hint).
#[repr(C)]
#[derive(Debug)]
pub struct SlotTableHeader {
    cursor: CachePadded<AtomicU64>,
}

impl SlotTableHeader {
    /// A header with the cursor at 0.
    pub fn new() -> Self {
        Self {
            cursor: CachePadded::new(AtomicU64::new(0)),
        }
    }
}

impl Default for SlotTableHeader {
    fn default() -> Self {
        Self::new()
    }
}

/// A slot a client claimed: where the answer goes and which use it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The slot index.
    pub index: u32,
    /// The generation of this use.
    pub generation: u32,
    /// The claimer's registration index.
    pub owner: u32,
}

/// A request a worker holds (the slot is `Completing`): returned by
/// [`SlotTable::begin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begun {
    index: u32,
    generation: u32,
    owner: u32,
}

impl Begun {
    /// The slot index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The generation of the use being answered.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The owner's registration index.
    pub fn owner(&self) -> u32 {
        self.owner
    }

    fn completing(&self) -> u64 {
        pack(self.generation, self.owner, SlotState::Completing)
    }
}

/// Why the server will not answer a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    /// The index is beyond the table.
    #[error("response slot {index} is out of range (the table has {len})")]
    OutOfRange {
        /// The index found in the ring.
        index: u32,
        /// The table length.
        len: usize,
    },
    /// The owner abandoned the request; the slot was freed.
    #[error("the request was abandoned by its client")]
    Abandoned,
    /// The slot holds no request waiting for a worker: a stale, duplicate
    /// or forged index.
    #[error("response slot {index} holds no pending request ({found:?})")]
    NotPending {
        /// The slot index.
        index: u32,
        /// What the slot's word held.
        found: SlotWord,
    },
}

/// How [`SlotTable::complete`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// The answer is ready for its owner.
    Delivered,
    /// The owner had abandoned it; the slot was freed.
    Abandoned,
    /// The slot had moved on (forged); the answer was dropped.
    Stale,
}

/// What a client's poll found.
#[derive(Debug, Clone, Copy)]
pub enum Poll {
    /// The answer, taken; the slot is free again.
    Ready(Response),
    /// Not answered yet.
    Pending,
    /// The slot is no longer ours (reclaimed as if we were dead), or its
    /// answer is for another use.
    Lost,
}

/// How a client's wait ended.
#[derive(Debug, Clone, Copy)]
pub enum WaitOutcome {
    /// The answer, taken; the slot is free again.
    Ready(Response),
    /// The deadline passed; the slot was abandoned.
    TimedOut,
    /// `server_alive` said no; the slot was abandoned.
    ServerGone,
    /// The slot is no longer ours.
    Lost,
}

/// Counts of slots by state, plus words whose state is garbage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateCounts {
    /// Indexed by `SlotState as usize`.
    pub by_state: [usize; 6],
    /// Words whose state field is not a known state.
    pub invalid: usize,
}

impl StateCounts {
    /// Slots in `state`.
    pub fn get(&self, state: SlotState) -> usize {
        self.by_state[state as usize]
    }
}

/// A view of a response table whose header and slots live elsewhere.
#[derive(Clone, Copy)]
pub struct SlotTable<'a> {
    header: &'a SlotTableHeader,
    slots: &'a [CachePadded<Slot>],
}

impl fmt::Debug for SlotTable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotTable")
            .field("len", &self.slots.len())
            .finish()
    }
}

impl<'a> SlotTable<'a> {
    /// Wraps an initialised header and slots.
    ///
    /// # Panics
    ///
    /// If there are no slots, or more than `u32::MAX`.
    pub fn new(header: &'a SlotTableHeader, slots: &'a [CachePadded<Slot>]) -> Self {
        assert!(
            !slots.is_empty(),
            "a response table needs at least one slot"
        );
        assert!(slots.len() <= u32::MAX as usize, "too many response slots");
        Self { header, slots }
    }

    /// Wraps a table that lives in memory we do not own (the region).
    ///
    /// # Safety
    ///
    /// * `header` points to a `SlotTableHeader` and `slots` to `len`
    ///   consecutive `CachePadded<Slot>`, properly aligned, inside a
    ///   mapping that outlives `'a`;
    /// * every byte is initialised (zero-filled is a valid empty table) and
    ///   only accessed through atomics or this protocol;
    /// * `len > 0`.
    #[cfg(not(loom))]
    pub unsafe fn from_raw(
        header: *const SlotTableHeader,
        slots: *const CachePadded<Slot>,
        len: usize,
    ) -> Self {
        // SAFETY: guaranteed by the caller; every field is an atomic, so
        // shared references allow cross-process mutation.
        let (header, slots) = unsafe { (&*header, std::slice::from_raw_parts(slots, len)) };
        Self::new(header, slots)
    }

    /// Resets every slot to `Free` with generation 0.
    ///
    /// Only for a table nobody else uses yet.
    pub fn init(&self) {
        for slot in self.slots {
            slot.word.store(0, Ordering::Relaxed);
            slot.ec.reset();
            slot.owner_pid.store(0, Ordering::Relaxed);
        }
        self.header.cursor.store(0, Ordering::Relaxed);
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Always false: a table has at least one slot.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The slot at an index we produced ourselves (from a claim).
    fn own_slot(&self, index: u32) -> &'a Slot {
        debug_assert!((index as usize) < self.slots.len());
        &self.slots[index as usize]
    }

    /// Claims a free slot for `owner`, probing from the start of the table;
    /// `None` when every slot is in use.
    ///
    /// # Panics
    ///
    /// If `owner > MAX_OWNER`.
    pub fn claim(&self, owner: u32) -> Option<Claim> {
        self.claim_from(owner, std::process::id(), 0)
            .map(|(claim, _)| claim)
    }

    /// Claims a free slot probing from `start` (a caller's own hint, so
    /// claimers in different processes do not all bump one shared cursor
    /// line), recording `pid` as the owner's pid (callers cache it: `getpid`
    /// is a syscall); returns the claim and where the next probe should start.
    ///
    /// # Panics
    ///
    /// If `owner > MAX_OWNER`.
    pub fn claim_from(&self, owner: u32, pid: u32, start: u64) -> Option<(Claim, u64)> {
        assert!(owner <= MAX_OWNER, "owner index out of range");
        let len = self.slots.len() as u64;
        for probe in 0..len {
            let index = ((start.wrapping_add(probe)) % len) as u32;
            let slot = self.own_slot(index);
            let free = SlotState::Free as u32;
            if let Some(generation) =
                crate::word::try_claim(&slot.word, free, owner, SlotState::Claimed as u32)
            {
                slot.owner_pid.store(pid, Ordering::Relaxed);
                // A previous owner may have died announced as a waiter.
                slot.ec.reset();
                let claim = Claim {
                    index,
                    generation,
                    owner,
                };
                return Some((claim, start.wrapping_add(probe + 1)));
            }
        }
        None
    }

    /// Writes a request into a claimed slot: the header (with the claim's
    /// generation) and, unless it is [`STAGED`](crate::protocol::STAGED),
    /// the key and the value inline, straight from the caller's bytes. Call
    /// before [`SlotTable::mark_pending`]. False (nothing usable written) if
    /// an inline payload does not fit the data area.
    pub fn write_request(
        &self,
        claim: &Claim,
        request: &Request,
        key: &[u8],
        value: &[u8],
    ) -> bool {
        let slot = self.own_slot(claim.index);
        let req = Request {
            generation: claim.generation,
            ..*request
        };
        if !req.staged() {
            let data = Words::new(&slot.data);
            let payload = req.payload();
            if data.write_bytes(0, key, |_| {}).is_err()
                || data.write_bytes(payload.value_at(), value, |_| {}).is_err()
            {
                return false;
            }
        }
        // The slot is `Claimed` by us: no worker reads it until our Release
        // CAS to `Pending` (mark_pending), which orders these stores.
        req.encode(&slot.request);
        true
    }

    /// The data area of slot `index` (the key and value of a request a
    /// worker began, the answer it writes; the owner's own slot). Only the
    /// party the slot protocol lets write it may write it.
    pub fn data(&self, index: u32) -> Words<'a> {
        match self.slots.get(index as usize) {
            Some(slot) => Words::new(&slot.data),
            None => Words::new(&[]),
        }
    }

    /// Marks a claimed slot `Pending` (CAS `Claimed(g) -> Pending(g)`); call
    /// after writing the request and before pushing the index. False if the
    /// slot is not ours any more.
    pub fn mark_pending(&self, claim: &Claim) -> bool {
        // Release: the request happens before the worker's Acquire CAS in
        // `begin`. Relaxed on failure: nothing was published.
        self.own_slot(claim.index)
            .word
            .compare_exchange(
                pack(claim.generation, claim.owner, SlotState::Claimed),
                pack(claim.generation, claim.owner, SlotState::Pending),
                Ordering::Release,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// Gives a claimed slot back without a request (the push failed).
    ///
    /// Returns false if the slot was not `Pending`/`Claimed` for this claim.
    pub fn release(&self, claim: &Claim) -> bool {
        let slot = self.own_slot(claim.index);
        let free = pack(claim.generation, claim.owner, SlotState::Free);
        [SlotState::Claimed, SlotState::Pending]
            .into_iter()
            .any(|s| {
                // Release pairs with the next claimer's Acquire.
                slot.word
                    .compare_exchange(
                        pack(claim.generation, claim.owner, s),
                        free,
                        Ordering::Release,
                        Ordering::Relaxed,
                    )
                    .is_ok()
            })
    }

    /// Whether the word says "not answered yet" for this claim.
    fn unanswered(word: u64, claim: &Claim) -> bool {
        word == pack(claim.generation, claim.owner, SlotState::Pending)
            || word == pack(claim.generation, claim.owner, SlotState::Completing)
    }

    /// Whether the request in `claim`'s slot is no longer waiting for its
    /// answer (answered, lost, or the slot moved on): what a sleeper on the
    /// owner's doorbell checks after `prepare`. `SeqCst`: the waiter's
    /// condition load in the Dekker pair with `complete`'s CAS (see
    /// `crate::region::clients`).
    pub fn settled(&self, claim: &Claim) -> bool {
        !Self::unanswered(
            self.own_slot(claim.index).word.load(Ordering::SeqCst),
            claim,
        )
    }

    /// Takes the answer if it is ready, copying an inline value into
    /// `value` (when given; cleared if the answer has none inline).
    pub fn poll(&self, claim: &Claim, value: Option<&mut Vec<u8>>) -> Poll {
        let slot = self.own_slot(claim.index);
        // Acquire pairs with the server's Release (SeqCst) CAS to Ready.
        let word = slot.word.load(Ordering::Acquire);
        if Self::unanswered(word, claim) {
            Poll::Pending
        } else if word == pack(claim.generation, claim.owner, SlotState::Ready) {
            self.take(slot, claim, value)
        } else {
            Poll::Lost
        }
    }

    /// Copies the answer (and an inline value, into `value`) out and frees
    /// the slot. The word is `Ready(g)`.
    fn take(&self, slot: &Slot, claim: &Claim, value: Option<&mut Vec<u8>>) -> Poll {
        // The word is `Ready` for our generation, so the server has finished
        // writing (its Release CAS, our Acquire load) and nobody writes the
        // answer until the slot is claimed again, which needs the `Free` we
        // store below.
        let response = Response::decode(&slot.response);
        if let Some(out) = value {
            out.clear();
            if response.value_inline() && response.generation == claim.generation {
                let _ = Words::new(&slot.data).read_into(0, u64::from(response.value_len), out);
            }
        }
        // Release: our read of the answer happens before the next claim.
        slot.word.store(
            pack(claim.generation, claim.owner, SlotState::Free),
            Ordering::Release,
        );
        if response.generation == claim.generation {
            Poll::Ready(response)
        } else {
            // Written for another use of the slot (a forged word let a late
            // worker in): never hand it to this request.
            Poll::Lost
        }
    }

    /// Gives up on a submitted request. If the answer arrived meanwhile it
    /// is taken and returned (its value is dropped).
    pub fn abandon(&self, claim: &Claim) -> Option<Response> {
        let slot = self.own_slot(claim.index);
        let abandoned = pack(claim.generation, claim.owner, SlotState::Abandoned);
        let mut current = slot.word.load(Ordering::Acquire);
        loop {
            if Self::unanswered(current, claim) {
                // Acquire on failure: if the word turned Ready we read the
                // answer next.
                match slot.word.compare_exchange(
                    current,
                    abandoned,
                    Ordering::Relaxed,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return None,
                    Err(w) => current = w,
                }
            } else if current == pack(claim.generation, claim.owner, SlotState::Ready) {
                return match self.take(slot, claim, None) {
                    Poll::Ready(r) => Some(r),
                    _ => None,
                };
            } else {
                // A claim that was never submitted, or a slot reclaimed from us.
                self.release(claim);
                return None;
            }
        }
    }

    /// Waits for the answer: spins per `policy`, then sleeps on the slot's
    /// event count in slices of [`SLEEP_SLICE`], checking `server_alive` and
    /// the deadline between slices; takes the answer as [`poll`](Self::poll)
    /// does. The deadline is asked for only once the spinning is
    /// over (so a call answered while spinning reads no clock). On timeout
    /// or a dead server the request is abandoned.
    pub fn wait<P: Parker>(
        &self,
        claim: &Claim,
        value: Option<&mut Vec<u8>>,
        policy: SpinPolicy,
        parker: &P,
        deadline: impl FnOnce() -> Option<Instant>,
        mut server_alive: impl FnMut() -> bool,
    ) -> WaitOutcome {
        let slot = self.own_slot(claim.index);
        let answered = || !Self::unanswered(slot.word.load(Ordering::Acquire), claim);
        if !spin_then_yield(policy, answered) {
            let deadline = deadline();
            loop {
                // Announce the sleep, then re-check: the Dekker pair with
                // `complete` (both SeqCst), see `crate::wait`.
                let key = slot.ec.prepare();
                if !Self::unanswered(slot.word.load(Ordering::SeqCst), claim) {
                    slot.ec.cancel();
                    break;
                }
                let slice = match deadline {
                    Some(d) => {
                        let left = d.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            slot.ec.cancel();
                            return self.give_up(claim, WaitOutcome::TimedOut);
                        }
                        left.min(SLEEP_SLICE)
                    }
                    None => SLEEP_SLICE,
                };
                slot.ec.wait(key, Some(slice), parker);
                if answered() {
                    break;
                }
                if !server_alive() {
                    return self.give_up(claim, WaitOutcome::ServerGone);
                }
            }
        }
        match self.poll(claim, value) {
            Poll::Ready(r) => WaitOutcome::Ready(r),
            Poll::Lost => WaitOutcome::Lost,
            // Cannot happen after the word changed, but be total.
            Poll::Pending => self.give_up(claim, WaitOutcome::Lost),
        }
    }

    fn give_up(&self, claim: &Claim, outcome: WaitOutcome) -> WaitOutcome {
        match self.abandon(claim) {
            Some(r) => WaitOutcome::Ready(r),
            None => outcome,
        }
    }

    /// Server side: takes the request in slot `index` (an untrusted index
    /// popped from the ring): CAS `Pending(g) -> Completing(g)`, after which
    /// this worker alone writes the answer. An abandoned slot is freed here.
    ///
    /// # Errors
    ///
    /// [`SlotError`] when there is nothing to answer.
    pub fn begin(&self, index: u32) -> Result<Begun, SlotError> {
        let slot = self
            .slots
            .get(index as usize)
            .ok_or(SlotError::OutOfRange {
                index,
                len: self.slots.len(),
            })?;
        // SeqCst: the server's "busy" registry relies on this load being
        // ordered after its own SeqCst store of the slot it works on (the
        // reclaimer's side of that Dekker pair lives in kvs-server).
        let mut word = slot.word.load(Ordering::SeqCst);
        // At most twice round: a failed CAS means the owner abandoned (or a
        // scribbler wrote) in between; judge the new word once more.
        for _ in 0..2 {
            let w = SlotWord::unpack(word);
            match SlotState::try_from(w.state) {
                Ok(SlotState::Pending) => {
                    let completing = pack(w.generation, w.owner, SlotState::Completing);
                    // Acquire (in SeqCst) pairs with the owner's Release in
                    // `mark_pending`: we read the request next. SeqCst for
                    // the busy registry, as above.
                    match slot.word.compare_exchange(
                        word,
                        completing,
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    ) {
                        Ok(_) => {
                            return Ok(Begun {
                                index,
                                generation: w.generation,
                                owner: w.owner,
                            })
                        }
                        Err(now) => word = now,
                    }
                }
                Ok(SlotState::Abandoned) => {
                    self.free_abandoned(slot, word);
                    return Err(SlotError::Abandoned);
                }
                _ => return Err(SlotError::NotPending { index, found: w }),
            }
        }
        Err(SlotError::NotPending {
            index,
            found: SlotWord::unpack(word),
        })
    }

    /// Server side: the request header of a begun slot, copied out (its key
    /// and value are in [`data`](Self::data) or a staging buffer). Validate
    /// the copy: a hostile process may have written anything.
    pub fn read_request(&self, begun: &Begun) -> Request {
        // We hold the slot (`Completing`, after an Acquire that pairs with
        // the owner's Release), so the owner's stores are visible.
        Request::decode(&self.own_slot(begun.index).request)
    }

    fn free_abandoned(&self, slot: &Slot, abandoned: u64) -> bool {
        let w = SlotWord::unpack(abandoned);
        // Release pairs with the next claimer's Acquire.
        slot.word
            .compare_exchange(
                abandoned,
                pack(w.generation, w.owner, SlotState::Free),
                Ordering::Release,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// Server side: writes the answer header (tagged with the generation;
    /// an inline value was written into [`data`](Self::data) before) and
    /// hands it to the owner, waking it if it sleeps.
    pub fn complete<P: Parker>(&self, begun: Begun, response: &Response, parker: &P) -> Completion {
        let slot = self.own_slot(begun.index);
        // We hold the slot (`Completing` since `begin`): no one else writes
        // the answer, and the owner reads it only after our CAS to `Ready`.
        response.encode(&slot.response, begun.generation);
        let ready = pack(begun.generation, begun.owner, SlotState::Ready);
        // SeqCst: Release publishes the answer (pairs with the owner's
        // Acquire in `poll`/`wait`), and SeqCst makes it the condition write
        // of the event count's Dekker pair with `wait` (see `crate::wait`).
        match slot.word.compare_exchange(
            begun.completing(),
            ready,
            Ordering::SeqCst,
            Ordering::Relaxed,
        ) {
            Ok(_) => {
                slot.ec.notify(u32::MAX, parker);
                Completion::Delivered
            }
            Err(current) => {
                let abandoned = pack(begun.generation, begun.owner, SlotState::Abandoned);
                if current == abandoned && self.free_abandoned(slot, abandoned) {
                    Completion::Abandoned
                } else {
                    Completion::Stale
                }
            }
        }
    }

    /// Server side: frees what a dead owner left behind, abandoned slots no
    /// worker is answering, and garbage states. Returns how many slots were
    /// freed.
    ///
    /// * `owner_dead(owner)` says whether a registration index belongs to a
    ///   dead client (or to no client at all);
    /// * `busy(index)` says whether a worker holds that slot (between the
    ///   busy mark it sets before `begin` and the one it clears after
    ///   `complete`). Checked after the SeqCst load (or CAS) of the word;
    ///   workers mark before their SeqCst `begin`, so one side always sees
    ///   the other.
    pub fn reclaim(&self, owner_dead: impl Fn(u32) -> bool, busy: impl Fn(u32) -> bool) -> usize {
        let mut freed = 0;
        for (index, slot) in self.slots.iter().enumerate() {
            let index = index as u32;
            let word = slot.word.load(Ordering::SeqCst);
            let w = SlotWord::unpack(word);
            let free = pack(w.generation, w.owner, SlotState::Free);
            let dead = || owner_dead(w.owner);
            let target = match SlotState::try_from(w.state) {
                Ok(SlotState::Free) => continue,
                // Claimed: the request was never pushed. Ready: nobody will take it.
                Ok(SlotState::Claimed | SlotState::Ready) if dead() => free,
                Ok(SlotState::Pending | SlotState::Completing) if dead() => {
                    let abandoned = pack(w.generation, w.owner, SlotState::Abandoned);
                    // SeqCst: half of the Dekker pair with the worker's busy
                    // mark. A worker that holds it frees it when it completes.
                    if slot
                        .word
                        .compare_exchange(word, abandoned, Ordering::SeqCst, Ordering::Relaxed)
                        .is_err()
                        || busy(index)
                    {
                        continue;
                    }
                    if self.free_abandoned(slot, abandoned) {
                        freed += 1;
                    }
                    continue;
                }
                Ok(SlotState::Abandoned) => {
                    if busy(index) {
                        continue;
                    }
                    if self.free_abandoned(slot, word) {
                        freed += 1;
                    }
                    continue;
                }
                // A garbage state: nobody can own it; reset it (bump the
                // generation so no use of it can match).
                Err(_) if !busy(index) => pack(w.generation.wrapping_add(1), 0, SlotState::Free),
                _ => continue,
            };
            // Release pairs with the next claimer's Acquire.
            if slot
                .word
                .compare_exchange(word, target, Ordering::Release, Ordering::Relaxed)
                .is_ok()
            {
                freed += 1;
            }
        }
        freed
    }

    /// Number of `Free` slots (a racy snapshot).
    pub fn free_count(&self) -> usize {
        self.state_counts().get(SlotState::Free)
    }

    /// Slots by state (a racy snapshot).
    pub fn state_counts(&self) -> StateCounts {
        let mut counts = StateCounts::default();
        for slot in self.slots {
            match SlotState::try_from(SlotWord::unpack(slot.word.load(Ordering::Relaxed)).state) {
                Ok(s) => counts.by_state[s as usize] += 1,
                Err(_) => counts.invalid += 1,
            }
        }
        counts
    }

    /// The word of slot `index`, if in range (diagnostics and tests).
    pub fn word(&self, index: u32) -> Option<SlotWord> {
        self.slots
            .get(index as usize)
            .map(|s| SlotWord::unpack(s.word.load(Ordering::Relaxed)))
    }
}

/// A heap-backed response table: for tests and loom models.
pub struct SlotTableBuffer {
    header: SlotTableHeader,
    slots: Box<[CachePadded<Slot>]>,
}

impl fmt::Debug for SlotTableBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotTableBuffer")
            .field("len", &self.slots.len())
            .finish()
    }
}

impl SlotTableBuffer {
    /// A table of `len` free slots.
    ///
    /// # Panics
    ///
    /// If `len` is 0.
    pub fn new(len: usize) -> Self {
        assert!(len > 0, "a response table needs at least one slot");
        Self {
            header: SlotTableHeader::new(),
            slots: (0..len).map(|_| CachePadded::new(Slot::new())).collect(),
        }
    }

    /// The table over this buffer.
    pub fn table(&self) -> SlotTable<'_> {
        SlotTable::new(&self.header, &self.slots)
    }

    /// Overwrites slot `index`'s word, as a scribbler would (tests).
    #[doc(hidden)]
    pub fn set_word(&self, index: usize, generation: u32, owner: u32, state: u32) {
        self.slots[index].word.store(
            crate::word::pack(generation, owner, state),
            Ordering::SeqCst,
        );
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::protocol::{OpCode, StatusCode};
    use crate::wait::{FutexParker, SpinParker};
    use std::time::Duration;

    type Table<'a> = SlotTable<'a>;

    fn ok(v: u64) -> Response {
        Response {
            version: v,
            ..Response::status(StatusCode::Ok)
        }
    }

    /// A GET whose "key" travels in `arg` (the table does not look at it).
    fn get_req(key: u64) -> Request {
        Request {
            op: OpCode::Get as u16,
            arg: key,
            ..Request::default()
        }
    }

    /// Claims and submits a GET of `key`.
    fn submit(t: &Table<'_>, owner: u32, key: u64) -> Claim {
        let c = t.claim(owner).unwrap();
        t.write_request(&c, &get_req(key), b"", b"");
        assert!(t.mark_pending(&c));
        c
    }

    #[test]
    fn full_cycle_frees_the_slot() {
        let buf = SlotTableBuffer::new(2);
        let t = buf.table();
        let c = submit(&t, 3, 42);
        assert_eq!(c.generation, 1);
        assert!(matches!(t.poll(&c, None), Poll::Pending));
        let b = t.begin(c.index).unwrap();
        assert_eq!(b.owner(), 3);
        let req = t.read_request(&b);
        assert_eq!(
            (req.op(), req.arg, req.generation),
            (Ok(OpCode::Get), 42, 1)
        );
        assert!(
            matches!(t.poll(&c, None), Poll::Pending),
            "Completing is unanswered"
        );
        assert_eq!(t.complete(b, &ok(9), &SpinParker), Completion::Delivered);
        match t.poll(&c, None) {
            Poll::Ready(r) => assert_eq!((r.version, r.generation), (9, 1)),
            other => panic!("{other:?}"),
        }
        assert_eq!(t.free_count(), 2);
    }

    #[test]
    fn keys_values_and_answers_travel_inline() {
        let buf = SlotTableBuffer::new(1);
        let t = buf.table();
        let c = t.claim(0).unwrap();
        let req = Request {
            op: OpCode::Set as u16,
            key_len: 3,
            value_len: 11,
            ..Request::default()
        };
        assert!(t.write_request(&c, &req, b"key", b"hello world"));
        assert!(t.mark_pending(&c));
        let b = t.begin(c.index).unwrap();
        let got = t.read_request(&b);
        assert_eq!(
            (got.op(), got.generation, got.key_len, got.value_len),
            (Ok(OpCode::Set), c.generation, 3, 11)
        );
        let (mut k, mut v) = (Vec::new(), Vec::new());
        let data = t.data(b.index());
        data.read_into(0, 3, &mut k).unwrap();
        data.read_into(got.payload().value_at(), 11, &mut v)
            .unwrap();
        assert_eq!(
            (k.as_slice(), v.as_slice()),
            (&b"key"[..], &b"hello world"[..])
        );
        data.write_bytes(0, b"answer", |_| {}).unwrap();
        let answer = Response {
            value_len: 6,
            ..Response::status(StatusCode::Ok)
        };
        t.complete(b, &answer, &SpinParker);
        let mut out = vec![1, 2, 3];
        assert!(matches!(t.poll(&c, Some(&mut out)), Poll::Ready(r) if r.value_len == 6));
        assert_eq!(out, b"answer");
        // A payload that does not fit inline is refused, not truncated.
        let c = t.claim(0).unwrap();
        let big = vec![0u8; crate::protocol::INLINE_BYTES];
        let req = Request {
            op: OpCode::Set as u16,
            key_len: 1,
            value_len: big.len() as u32,
            ..Request::default()
        };
        assert!(!t.write_request(&c, &req, b"k", &big));
    }

    #[test]
    fn claim_returns_none_when_all_slots_are_in_use() {
        let buf = SlotTableBuffer::new(3);
        let t = buf.table();
        let claims: Vec<_> = (0..3).map(|_| t.claim(0).unwrap()).collect();
        assert!(t.claim(0).is_none());
        let mut idx: Vec<_> = claims.iter().map(|c| c.index).collect();
        idx.sort_unstable();
        assert_eq!(idx, vec![0, 1, 2]);
        assert!(t.release(&claims[1]));
        assert_eq!(t.claim(0).unwrap().index, claims[1].index);
    }

    #[test]
    fn mark_pending_refuses_a_slot_that_moved_on() {
        let buf = SlotTableBuffer::new(1);
        let t = buf.table();
        let c = t.claim(0).unwrap();
        buf.set_word(0, c.generation, c.owner, SlotState::Free as u32);
        assert!(!t.mark_pending(&c));
        assert_eq!(t.word(0).unwrap().state, SlotState::Free as u32);
    }

    #[test]
    fn server_drops_answer_of_abandoned_request() {
        let buf = SlotTableBuffer::new(1);
        let t = buf.table();
        let c = submit(&t, 0, 1);
        let b = t.begin(c.index).unwrap();
        assert!(t.abandon(&c).is_none(), "abandoned while Completing");
        assert_eq!(t.complete(b, &ok(1), &SpinParker), Completion::Abandoned);
        assert_eq!(t.free_count(), 1);
    }

    #[test]
    fn abandon_after_ready_takes_the_answer() {
        let buf = SlotTableBuffer::new(1);
        let t = buf.table();
        let c = submit(&t, 0, 1);
        let b = t.begin(c.index).unwrap();
        t.complete(b, &ok(5), &SpinParker);
        assert_eq!(t.abandon(&c).map(|r| r.version), Some(5));
        assert_eq!(t.free_count(), 1);
    }

    #[test]
    fn begin_takes_a_request_once_and_frees_abandoned_ones() {
        let buf = SlotTableBuffer::new(2);
        let t = buf.table();
        let c = submit(&t, 0, 1);
        t.abandon(&c);
        assert_eq!(t.begin(c.index), Err(SlotError::Abandoned));
        assert_eq!(t.free_count(), 2);
        // The same index again: nothing pending.
        assert!(matches!(
            t.begin(c.index),
            Err(SlotError::NotPending { .. })
        ));
        assert!(matches!(
            t.begin(7),
            Err(SlotError::OutOfRange { index: 7, len: 2 })
        ));
        let c = submit(&t, 0, 2);
        let _b = t.begin(c.index).unwrap();
        assert!(
            matches!(t.begin(c.index), Err(SlotError::NotPending { .. })),
            "a duplicate index must not begin a request twice"
        );
    }

    /// The defect of the old protocol: a worker wrote its answer while the
    /// word said only `Pending`, so a scribbler that flipped the slot to
    /// `Free` let an honest client claim it and then receive the old
    /// answer. Now the worker writes only what it holds (`Completing`), its
    /// completion of a slot that moved on is dropped, and an answer that
    /// does land in the new owner's slot carries the wrong generation and
    /// is refused.
    #[test]
    fn a_forged_word_never_hands_a_client_another_requests_answer() {
        let buf = SlotTableBuffer::new(1);
        let t = buf.table();
        let old = submit(&t, 0, 1);
        // Forged before the worker begins: nothing to begin, nothing written.
        buf.set_word(0, old.generation, 0, SlotState::Free as u32);
        assert!(t.begin(old.index).is_err());
        let honest = submit(&t, 1, 2);
        let b = t.begin(honest.index).unwrap();
        t.complete(b, &ok(22), &SpinParker);
        assert!(matches!(t.poll(&honest, None), Poll::Ready(r) if r.version == 22));

        // Forged while a worker holds it: the late answer is written into
        // the new owner's slot before its own worker begins, and refused.
        let old = submit(&t, 0, 3);
        let late = t.begin(old.index).unwrap();
        buf.set_word(0, old.generation, 0, SlotState::Free as u32);
        let honest = submit(&t, 1, 4);
        assert_eq!(t.complete(late, &ok(666), &SpinParker), Completion::Stale);
        // The late worker's bytes sit in the slot, but the word is Pending
        // for the honest client: nothing is taken yet...
        assert!(matches!(t.poll(&honest, None), Poll::Pending));
        // ... and even a forged Ready cannot pass the old answer off.
        buf.set_word(0, honest.generation, 1, SlotState::Ready as u32);
        assert!(matches!(t.poll(&honest, None), Poll::Lost));
    }

    #[test]
    fn stale_answer_never_reaches_a_later_claim() {
        let buf = SlotTableBuffer::new(1);
        let t = buf.table();
        let old = submit(&t, 0, 1);
        t.abandon(&old);
        // The reclaimer frees the abandoned slot; a new client claims it.
        assert_eq!(t.reclaim(|_| false, |_| false), 1);
        let new = submit(&t, 1, 2);
        assert_eq!(new.index, old.index);
        assert_ne!(new.generation, old.generation);
        // The old index arrives late: it begins the current request, which
        // is the new client's own (written by it, answered to it).
        let b = t.begin(old.index).unwrap();
        assert_eq!(t.read_request(&b).arg, 2);
        t.complete(b, &ok(2), &SpinParker);
        assert!(matches!(t.poll(&new, None), Poll::Ready(r) if r.version == 2));
    }

    #[test]
    fn generation_wraps() {
        let buf = SlotTableBuffer::new(1);
        buf.set_word(0, u32::MAX, 0, SlotState::Free as u32);
        let t = buf.table();
        let c = submit(&t, 0, 1);
        assert_eq!(c.generation, 0);
        let b = t.begin(0).unwrap();
        assert_eq!(b.generation(), 0);
    }

    #[test]
    fn reclaim_frees_what_dead_owners_left() {
        let buf = SlotTableBuffer::new(6);
        buf.set_word(0, 4, 7, SlotState::Claimed as u32);
        buf.set_word(1, 4, 7, SlotState::Pending as u32);
        buf.set_word(2, 4, 7, SlotState::Ready as u32);
        buf.set_word(3, 4, 8, SlotState::Pending as u32); // alive owner
        buf.set_word(4, 4, 7, SlotState::Completing as u32); // forged: no worker
        buf.slots[5]
            .word
            .store(0xffff_ffff_ffff_ff77, Ordering::SeqCst); // garbage
        let t = buf.table();
        assert_eq!(t.reclaim(|o| o == 7, |_| false), 5);
        assert_eq!(t.free_count(), 5);
        assert_eq!(t.word(3).unwrap().state, SlotState::Pending as u32);
    }

    #[test]
    fn reclaim_leaves_slots_a_worker_is_answering() {
        let buf = SlotTableBuffer::new(2);
        buf.set_word(0, 4, 7, SlotState::Pending as u32);
        buf.set_word(1, 4, 7, SlotState::Completing as u32);
        let t = buf.table();
        assert_eq!(t.reclaim(|_| true, |_| true), 0);
        assert_eq!(t.word(0).unwrap().state, SlotState::Abandoned as u32);
        assert_eq!(t.word(1).unwrap().state, SlotState::Abandoned as u32);
    }

    #[test]
    fn wait_times_out_and_frees_after_server_answers() {
        let buf = SlotTableBuffer::new(1);
        let t = buf.table();
        let c = submit(&t, 0, 1);
        let deadline = Some(Instant::now() + Duration::from_millis(30));
        let policy = SpinPolicy {
            spins: 10,
            yields: 1,
        };
        let out = t.wait(&c, None, policy, &FutexParker, || deadline, || true);
        assert!(matches!(out, WaitOutcome::TimedOut));
        assert_eq!(t.begin(c.index), Err(SlotError::Abandoned));
        assert_eq!(t.free_count(), 1);
    }

    #[test]
    fn wait_reports_a_dead_server() {
        let buf = SlotTableBuffer::new(1);
        let t = buf.table();
        let c = submit(&t, 0, 1);
        let policy = SpinPolicy {
            spins: 10,
            yields: 1,
        };
        let out = t.wait(&c, None, policy, &FutexParker, || None, || false);
        assert!(matches!(out, WaitOutcome::ServerGone));
    }

    #[test]
    fn sleeping_waiter_is_woken_by_complete() {
        let buf = SlotTableBuffer::new(1);
        let t = buf.table();
        let c = submit(&t, 0, 1);
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                let b = t.begin(c.index).unwrap();
                t.complete(b, &ok(11), &FutexParker);
            });
            let policy = SpinPolicy {
                spins: 1,
                yields: 0,
            };
            let deadline = Some(Instant::now() + Duration::from_secs(10));
            let out = t.wait(&c, None, policy, &FutexParker, || deadline, || true);
            assert!(matches!(out, WaitOutcome::Ready(r) if r.version == 11));
        });
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::protocol::{OpCode, StatusCode};
    use crate::wait::loom_tests::ParkParker;
    use crate::wait::SpinParker;
    use loom::sync::Arc;
    use loom::thread;

    fn resp(v: u64) -> Response {
        Response {
            version: v,
            ..Response::status(StatusCode::Ok)
        }
    }

    fn get_req(key: u64) -> Request {
        Request {
            op: OpCode::Get as u16,
            arg: key,
            ..Request::default()
        }
    }

    fn submit(t: &SlotTable<'_>, owner: u32, key: u64) -> Claim {
        let c = t.claim(owner).unwrap();
        t.write_request(&c, &get_req(key), b"", b"");
        assert!(t.mark_pending(&c));
        c
    }

    /// The slot's use of the event count: `wait` (announce, re-check,
    /// sleep) against `complete` (CAS to Ready, notify): however they
    /// interleave, the waiter is woken or sees the answer before sleeping.
    #[test]
    fn sleeping_waiter_is_never_left_asleep() {
        loom::model(|| {
            let buf = Arc::new(SlotTableBuffer::new(1));
            let parker = Arc::new(ParkParker {
                waiter: loom::sync::Mutex::new(None),
            });
            let c = submit(&buf.table(), 0, 1);
            *parker.waiter.lock().unwrap() = Some(thread::current());
            let (b2, p2) = (Arc::clone(&buf), Arc::clone(&parker));
            let server = thread::spawn(move || {
                let t = b2.table();
                let b = t.begin(c.index).unwrap();
                t.complete(b, &resp(3), &*p2)
            });
            let no_spin = SpinPolicy {
                spins: 0,
                yields: 0,
            };
            let out = buf
                .table()
                .wait(&c, None, no_spin, &*parker, || None, || true);
            assert!(matches!(out, WaitOutcome::Ready(r) if r.version == 3));
            assert_eq!(server.join().unwrap(), Completion::Delivered);
        });
    }

    /// The owner's doorbell (`region::clients`, not built under loom:
    /// `ClientTable::ring` is `notify` on the entry's event count, which
    /// stands in for it here): a sleeper that announces itself on it, then
    /// scans the slot (`settled`), then sleeps, against a worker that
    /// completes the slot and then rings: the sleeper is woken or sees the
    /// answer before sleeping.
    #[test]
    fn the_doorbell_never_leaves_its_sleeper_asleep() {
        loom::model(|| {
            let buf = Arc::new(SlotTableBuffer::new(1));
            let doorbell = Arc::new(EventCount::new());
            let parker = Arc::new(ParkParker {
                waiter: loom::sync::Mutex::new(None),
            });
            let c = submit(&buf.table(), 0, 1);
            *parker.waiter.lock().unwrap() = Some(thread::current());
            let (b2, d2, p2) = (Arc::clone(&buf), Arc::clone(&doorbell), Arc::clone(&parker));
            let server = thread::spawn(move || {
                let t = b2.table();
                let b = t.begin(c.index).unwrap();
                if t.complete(b, &resp(3), &SpinParker) == Completion::Delivered {
                    d2.notify(u32::MAX, &*p2);
                }
            });
            let bell = &*doorbell;
            loop {
                let key = bell.prepare();
                if buf.table().settled(&c) {
                    bell.cancel();
                    break;
                }
                bell.wait(key, None, &*parker);
            }
            server.join().unwrap();
            assert!(matches!(buf.table().poll(&c, None), Poll::Ready(r) if r.version == 3));
        });
    }

    /// The server begins and completes while the client abandons: exactly
    /// one of "client got the answer" or "the slot was freed without it"
    /// happens, and the slot always ends free.
    #[test]
    fn complete_races_abandon() {
        loom::model(|| {
            let buf = Arc::new(SlotTableBuffer::new(1));
            let c = submit(&buf.table(), 0, 1);
            let b2 = Arc::clone(&buf);
            let server = thread::spawn(move || {
                let t = b2.table();
                match t.begin(c.index) {
                    Ok(b) => Some(t.complete(b, &resp(7), &SpinParker)),
                    Err(_) => None,
                }
            });
            let got = buf.table().abandon(&c);
            let completion = server.join().unwrap();
            match (got, completion) {
                (Some(r), Some(Completion::Delivered)) => assert_eq!(r.version, 7),
                (None, Some(Completion::Abandoned)) | (None, None) => {}
                other => panic!("unexpected outcome {other:?}"),
            }
            assert_eq!(buf.table().free_count(), 1);
        });
    }

    /// A slot freed by one client is claimed by another while a worker
    /// that popped the old index runs, and the reclaimer sweeps: the new
    /// owner only ever receives the answer to its own request.
    #[test]
    fn claim_after_free_never_sees_stale_answer() {
        loom::model(|| {
            let buf = Arc::new(SlotTableBuffer::new(1));
            let old = submit(&buf.table(), 0, 666);
            buf.table().abandon(&old);
            let b2 = Arc::clone(&buf);
            let server = thread::spawn(move || {
                let t = b2.table();
                if let Ok(b) = t.begin(old.index) {
                    let key = t.read_request(&b).arg;
                    t.complete(b, &resp(key), &SpinParker);
                }
            });
            let b3 = Arc::clone(&buf);
            let reclaimer = thread::spawn(move || {
                b3.table().reclaim(|_| false, |_| false);
            });
            let t = buf.table();
            let mut new = None;
            for _ in 0..3 {
                if let Some(c) = t.claim(1) {
                    t.write_request(&c, &get_req(1), b"", b"");
                    t.mark_pending(&c);
                    new = Some(c);
                    break;
                }
                thread::yield_now();
            }
            server.join().unwrap();
            reclaimer.join().unwrap();
            if let Some(new) = new {
                assert_ne!(new.generation, old.generation);
                match t.poll(&new, None) {
                    // The late worker began the new request: its own key.
                    Poll::Ready(r) => assert_eq!(r.version, 1),
                    Poll::Pending => {
                        let b = t.begin(new.index).unwrap();
                        t.complete(b, &resp(1), &SpinParker);
                        assert!(matches!(t.poll(&new, None), Poll::Ready(r) if r.version == 1));
                    }
                    Poll::Lost => panic!("the new claim was lost"),
                }
            }
        });
    }

    /// Generation wrap-around: a use of generation `u32::MAX` abandoned
    /// while a worker races it cannot complete the wrapped generation 0.
    #[test]
    fn generation_wrap() {
        loom::model(|| {
            let buf = Arc::new(SlotTableBuffer::new(1));
            buf.set_word(0, u32::MAX, 0, SlotState::Pending as u32);
            let b2 = Arc::clone(&buf);
            let client = thread::spawn(move || {
                let t = b2.table();
                let stale = Claim {
                    index: 0,
                    generation: u32::MAX,
                    owner: 0,
                };
                t.abandon(&stale);
                let c = t.claim(0);
                if let Some(c) = c {
                    t.write_request(&c, &get_req(5), b"", b"");
                    t.mark_pending(&c);
                }
                c
            });
            let t = buf.table();
            let begun = t.begin(0);
            let client_claim = client.join().unwrap();
            if let Ok(b) = begun {
                // We began generation u32::MAX before the abandon, or the
                // new use: either way our completion goes to that use only.
                let c = t.complete(b, &resp(5), &SpinParker);
                if b.generation() == u32::MAX {
                    assert_ne!(c, Completion::Delivered);
                }
            }
            if let Some(c) = client_claim {
                assert_eq!(c.generation, 0);
                match t.poll(&c, None) {
                    Poll::Ready(r) => assert_eq!(r.generation, 0),
                    Poll::Pending => {}
                    Poll::Lost => panic!("the wrapped claim was lost"),
                }
            }
        });
    }
}
