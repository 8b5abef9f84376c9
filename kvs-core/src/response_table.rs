//! The response table: slots that carry one answer each from the server back
//! to the client that asked.
//!
//! # The slot protocol
//!
//! Each slot has one 64-bit control word packing `generation` (high 32 bits),
//! `owner` (the client's registration index, 24 bits) and `state` (8 bits).
//! Packing them makes every transition a single CAS that checks all three, so
//! a stale or forged request can never act on a slot that has moved on.
//!
//! ```text
//!            claim (client)        submit (client)        complete (server)
//!   Free(g) ───────────────▶ Claimed(g+1) ──────▶ Pending(g+1) ──────▶ Ready(g+1)
//!      ▲                         │ release             │ abandon             │ take
//!      │                         ▼ (client)            ▼ (client, timeout)   │ (client)
//!      └─────────────────────────┴──────────── Abandoned(g+1) ◀─┘            │
//!      ▲             server drops the result and frees │                     │
//!      └───────────────────────────────────────────────┴─────────────────────┘
//! ```
//!
//! * **claim**: CAS `Free(g) -> Claimed(g+1, owner)`. The new generation goes
//!   into the request, so the answer to an older use of the slot cannot be
//!   taken for this one: the C++ system this grew from picked `task_id % 1024`
//!   with every client starting at 1, so clients overwrote each other's
//!   answers; here two requests can only share a slot and generation after
//!   2^32 reuses of that slot.
//! * **submit**: store `Pending` (Release) before the request is pushed, so the
//!   server, which pops it with Acquire, sees `Pending`.
//! * **complete**: the server checks that the word is exactly `Pending(g)` for
//!   the request's generation ([`SlotTable::begin`]), writes the response, and
//!   CASes `Pending(g) -> Ready(g)`. The response is written only while the
//!   word is `Pending(g)`, and the only other transition out of `Pending(g)` is
//!   the client's abandon, after which the client never reads the response.
//!   The Release half of the CAS pairs with the client's Acquire load of the
//!   word, so a client that sees `Ready` sees the whole response.
//! * **abandon**: a client that times out CASes `Pending(g) -> Abandoned(g)`. If
//!   that fails because the word is already `Ready(g)`, the answer arrived just
//!   in time and the client takes it. The server, finding `Abandoned(g)` when
//!   it completes, drops the result and frees the slot.
//! * **take**: the client copies the response out and stores `Free(g)` with
//!   Release, which pairs with the next claimer's Acquire CAS.
//!
//! Claiming is lock-free and O(1) amortised: a shared cursor spreads claimers
//! over the table and each probes forward from it; after one pass over every
//! slot a claim returns `None` instead of spinning.
//!
//! Waking: see [`crate::wait`]. The client sets the slot's `sleepers` word
//! before its last check and sleep; the server's `SeqCst` CAS to `Ready` and
//! its `SeqCst` load of `sleepers` form the Dekker pair that makes a lost
//! wake-up impossible.
//!
//! Every index that arrives from the ring is bounds-checked ([`SlotError`]),
//! every state decoded with [`SlotState::try_from`], and a word that is not
//! what the protocol expects is never written to by the server except by CAS
//! from the exact expected value.
//!
//! ```
//! use kvs_core::protocol::{Response, StatusCode};
//! use kvs_core::response_table::{Poll, SlotTableBuffer};
//! use kvs_core::wait::SpinParker;
//!
//! let buf = SlotTableBuffer::<u64>::new(4);
//! let table = buf.table();
//! let claim = table.claim(1).unwrap();
//! table.mark_pending(&claim);
//! // ... the server pops the request and answers:
//! let begun = table.begin(claim.index, claim.generation).unwrap();
//! table.complete(begun, Response::status(StatusCode::Ok), &SpinParker);
//! assert!(matches!(table.poll(&claim), Poll::Ready(_)));
//! assert_eq!(table.free_count(), 4);
//! ```

use crate::protocol::Response;
use crate::sync::{loom_sc_fence, AtomicU32, AtomicU64, Ordering, UnsafeCell};
use crate::wait::{spin_then_yield, Parker, SpinPolicy, SLEEP_SLICE};
use crossbeam_utils::CachePadded;
use std::fmt;
use std::time::Instant;

/// The state part of a slot's control word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum SlotState {
    /// Nobody uses the slot.
    Free = 0,
    /// A client owns the slot and is about to submit a request.
    Claimed = 1,
    /// The request is in the ring or being served.
    Pending = 2,
    /// The server wrote the response; the owner may take it.
    Ready = 3,
    /// The owner gave up; the server frees the slot when it gets there.
    Abandoned = 4,
}

impl SlotState {
    /// Every state, in wire order.
    pub const ALL: [SlotState; 5] = [
        SlotState::Free,
        SlotState::Claimed,
        SlotState::Pending,
        SlotState::Ready,
        SlotState::Abandoned,
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

/// One response slot.
#[repr(C)]
#[derive(Debug)]
pub struct Slot<V> {
    /// Generation, owner and state; see the module docs.
    word: AtomicU64,
    /// 1 while the owner sleeps (or is about to) on this futex word.
    sleepers: AtomicU32,
    /// The owner's pid, for diagnostics only (never trusted).
    owner_pid: AtomicU32,
    /// Written by the server in `Pending`, read by the owner in `Ready`.
    response: UnsafeCell<Response<V>>,
}

impl<V: bytemuck::Zeroable> Slot<V> {
    fn new() -> Self {
        Self {
            word: AtomicU64::new(0),
            sleepers: AtomicU32::new(0),
            owner_pid: AtomicU32::new(0),
            response: UnsafeCell::new(bytemuck::Zeroable::zeroed()),
        }
    }
}

/// Table-wide state: the claim cursor, on its own cache line.
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

/// A request the server may answer: returned by [`SlotTable::begin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begun {
    index: u32,
    pending: u64,
}

impl Begun {
    /// The slot index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The owner's registration index.
    pub fn owner(&self) -> u32 {
        SlotWord::unpack(self.pending).owner
    }
}

/// Why the server will not answer a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    /// The request named a slot beyond the table.
    #[error("response slot {index} is out of range (the table has {len})")]
    OutOfRange {
        /// The index found in the request.
        index: u32,
        /// The table length.
        len: usize,
    },
    /// The owner abandoned the request; the slot was freed.
    #[error("the request was abandoned by its client")]
    Abandoned,
    /// The slot has moved on (another generation or state): a stale or
    /// forged request.
    #[error("stale request for slot {index}: generation {expected} is not {found:?}")]
    Stale {
        /// The slot index.
        index: u32,
        /// The generation the request carried.
        expected: u32,
        /// What the slot's word held.
        found: SlotWord,
    },
}

/// How [`SlotTable::complete`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// The response is ready for its owner.
    Delivered,
    /// The owner had abandoned it; the slot was freed.
    Abandoned,
    /// The slot had moved on; the response was dropped.
    Stale,
}

/// What a client's poll found.
#[derive(Debug, Clone, Copy)]
pub enum Poll<V> {
    /// The answer, taken; the slot is free again.
    Ready(Response<V>),
    /// Not answered yet.
    Pending,
    /// The slot is no longer ours (reclaimed as if we were dead).
    Lost,
}

/// How a client's wait ended.
#[derive(Debug, Clone, Copy)]
pub enum WaitOutcome<V> {
    /// The answer, taken; the slot is free again.
    Ready(Response<V>),
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
    pub by_state: [usize; 5],
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
pub struct SlotTable<'a, V> {
    header: &'a SlotTableHeader,
    slots: &'a [CachePadded<Slot<V>>],
}

impl<V> Clone for SlotTable<'_, V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<V> Copy for SlotTable<'_, V> {}

impl<V> fmt::Debug for SlotTable<'_, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotTable")
            .field("len", &self.slots.len())
            .finish()
    }
}

impl<'a, V: Copy + bytemuck::Zeroable> SlotTable<'a, V> {
    /// Wraps an initialised header and slots.
    ///
    /// # Panics
    ///
    /// If there are no slots, or more than `u32::MAX`.
    pub fn new(header: &'a SlotTableHeader, slots: &'a [CachePadded<Slot<V>>]) -> Self {
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
    ///   consecutive `CachePadded<Slot<V>>`, properly aligned, inside a mapping
    ///   that outlives `'a`;
    /// * every byte is initialised (zero-filled is a valid empty table) and
    ///   only accessed through atomics or this protocol;
    /// * `len > 0`.
    #[cfg(not(loom))]
    pub unsafe fn from_raw(
        header: *const SlotTableHeader,
        slots: *const CachePadded<Slot<V>>,
        len: usize,
    ) -> Self {
        // SAFETY: guaranteed by the caller; every field is an atomic or an
        // `UnsafeCell`, so shared references allow cross-process mutation.
        let (header, slots) = unsafe { (&*header, std::slice::from_raw_parts(slots, len)) };
        Self::new(header, slots)
    }

    /// Resets every slot to `Free` with generation 0.
    ///
    /// Only for a table nobody else uses yet.
    pub fn init(&self) {
        for slot in self.slots {
            slot.word.store(0, Ordering::Relaxed);
            slot.sleepers.store(0, Ordering::Relaxed);
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
    fn own_slot(&self, index: u32) -> &Slot<V> {
        debug_assert!((index as usize) < self.slots.len());
        &self.slots[index as usize]
    }

    /// Claims a free slot for `owner`; `None` when every slot is in use.
    ///
    /// # Panics
    ///
    /// If `owner > MAX_OWNER`.
    pub fn claim(&self, owner: u32) -> Option<Claim> {
        self.claim_as(owner, std::process::id())
    }

    /// [`SlotTable::claim`] recording `pid` as the owner's pid (callers cache
    /// it: `getpid` is a syscall).
    ///
    /// # Panics
    ///
    /// If `owner > MAX_OWNER`.
    pub fn claim_as(&self, owner: u32, pid: u32) -> Option<Claim> {
        // Relaxed: the cursor only spreads claimers; correctness comes from
        // the CAS on each slot's word.
        let start = self.header.cursor.fetch_add(1, Ordering::Relaxed);
        let (claim, next) = self.claim_from(owner, pid, start)?;
        if next != start.wrapping_add(1) {
            // Start the next claimer past the busy run we just walked.
            self.header.cursor.store(next, Ordering::Relaxed);
        }
        Some(claim)
    }

    /// Claims a free slot probing from `start` (a caller's own hint, so
    /// claimers in different processes do not all bump one shared cursor
    /// line); returns the claim and where the next probe should start.
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

    /// Marks a claimed slot `Pending`; call before pushing its request.
    pub fn mark_pending(&self, claim: &Claim) {
        // Release: ordered before the ring push (itself SeqCst/Release), so the
        // server that pops the request sees `Pending`.
        self.own_slot(claim.index).word.store(
            pack(claim.generation, claim.owner, SlotState::Pending),
            Ordering::Release,
        );
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

    /// Takes the answer if it is ready.
    pub fn poll(&self, claim: &Claim) -> Poll<V> {
        self.poll_parts(claim, true)
    }

    /// [`SlotTable::poll`], reading the value only if `with_value`.
    pub fn poll_parts(&self, claim: &Claim, with_value: bool) -> Poll<V> {
        let slot = self.own_slot(claim.index);
        // Acquire pairs with the server's Release (SeqCst) CAS to Ready.
        let word = slot.word.load(Ordering::Acquire);
        if word == pack(claim.generation, claim.owner, SlotState::Pending) {
            Poll::Pending
        } else if word == pack(claim.generation, claim.owner, SlotState::Ready) {
            Poll::Ready(self.take(slot, claim, with_value))
        } else {
            Poll::Lost
        }
    }

    /// Copies the response out and frees the slot. The word is `Ready(g)`.
    /// Without `with_value` the value is not read (and comes back zeroed),
    /// so its cache lines stay where they are.
    fn take(&self, slot: &Slot<V>, claim: &Claim, with_value: bool) -> Response<V>
    where
        V: bytemuck::Zeroable,
    {
        // SAFETY: the word is `Ready` for our generation, so the server has
        // finished writing (its Release CAS, our Acquire load) and nobody
        // writes the response until the slot is claimed again, which needs the
        // `Free` we store below. Field pointers stay inside the response.
        let response = slot.response.with(|p| unsafe {
            Response {
                status: std::ptr::addr_of!((*p).status).read(),
                aux: std::ptr::addr_of!((*p).aux).read(),
                version: std::ptr::addr_of!((*p).version).read(),
                modified_ns: std::ptr::addr_of!((*p).modified_ns).read(),
                value: if with_value {
                    std::ptr::addr_of!((*p).value).read()
                } else {
                    V::zeroed()
                },
            }
        });
        slot.sleepers.store(0, Ordering::Relaxed);
        // Release: our read of the response happens before the next claim.
        slot.word.store(
            pack(claim.generation, claim.owner, SlotState::Free),
            Ordering::Release,
        );
        response
    }

    /// Gives up on a pending request. If the answer arrived meanwhile it is
    /// taken and returned.
    pub fn abandon(&self, claim: &Claim) -> Option<Response<V>> {
        let slot = self.own_slot(claim.index);
        let pending = pack(claim.generation, claim.owner, SlotState::Pending);
        let abandoned = pack(claim.generation, claim.owner, SlotState::Abandoned);
        // Acquire on failure: if the word is Ready we read the response next.
        match slot
            .word
            .compare_exchange(pending, abandoned, Ordering::Relaxed, Ordering::Acquire)
        {
            Ok(_) => {
                slot.sleepers.store(0, Ordering::Relaxed);
                None
            }
            Err(w) if w == pack(claim.generation, claim.owner, SlotState::Ready) => {
                Some(self.take(slot, claim, true))
            }
            Err(_) => {
                // A claim that was never submitted, or a slot reclaimed from us.
                self.release(claim);
                None
            }
        }
    }

    /// Waits for the answer: spins per `policy`, then sleeps on the slot's
    /// futex word in slices of [`SLEEP_SLICE`], checking `server_alive` and
    /// the deadline between slices. On timeout or a dead server the request
    /// is abandoned.
    pub fn wait<P: Parker>(
        &self,
        claim: &Claim,
        policy: SpinPolicy,
        parker: &P,
        deadline: Option<Instant>,
        server_alive: impl FnMut() -> bool,
    ) -> WaitOutcome<V> {
        self.wait_parts(claim, true, policy, parker, || deadline, server_alive)
    }

    /// [`SlotTable::wait`], reading the value only if `with_value`, and
    /// asking for the deadline only once the spinning is over (so a call
    /// answered while spinning reads no clock).
    pub fn wait_parts<P: Parker>(
        &self,
        claim: &Claim,
        with_value: bool,
        policy: SpinPolicy,
        parker: &P,
        deadline: impl FnOnce() -> Option<Instant>,
        mut server_alive: impl FnMut() -> bool,
    ) -> WaitOutcome<V> {
        let slot = self.own_slot(claim.index);
        let pending = pack(claim.generation, claim.owner, SlotState::Pending);
        let answered = || slot.word.load(Ordering::Acquire) != pending;
        if !spin_then_yield(policy, answered) {
            let deadline = deadline();
            loop {
                // Announce the sleep, then re-check: the Dekker pair with
                // `complete` (both SeqCst), see `crate::wait`.
                slot.sleepers.store(1, Ordering::SeqCst);
                loom_sc_fence();
                if slot.word.load(Ordering::SeqCst) != pending {
                    break;
                }
                let slice = match deadline {
                    Some(d) => {
                        let left = d.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            return self.give_up(claim, WaitOutcome::TimedOut);
                        }
                        left.min(SLEEP_SLICE)
                    }
                    None => SLEEP_SLICE,
                };
                parker.wait(&slot.sleepers, 1, Some(slice));
                if answered() {
                    break;
                }
                if !server_alive() {
                    return self.give_up(claim, WaitOutcome::ServerGone);
                }
            }
        }
        match self.poll_parts(claim, with_value) {
            Poll::Ready(r) => WaitOutcome::Ready(r),
            Poll::Lost => WaitOutcome::Lost,
            // Cannot happen after the word changed, but be total.
            Poll::Pending => self.give_up(claim, WaitOutcome::Lost),
        }
    }

    fn give_up(&self, claim: &Claim, outcome: WaitOutcome<V>) -> WaitOutcome<V> {
        match self.abandon(claim) {
            Some(r) => WaitOutcome::Ready(r),
            None => outcome,
        }
    }

    /// Server side: validates a request's slot index and generation.
    ///
    /// Both come from shared memory and are untrusted. An abandoned slot of
    /// that generation is freed here.
    ///
    /// # Errors
    ///
    /// [`SlotError`] when the request must not be answered.
    pub fn begin(&self, index: u32, generation: u32) -> Result<Begun, SlotError> {
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
        let word = slot.word.load(Ordering::SeqCst);
        let w = SlotWord::unpack(word);
        if w.generation == generation {
            if w.state == SlotState::Pending as u32 {
                return Ok(Begun {
                    index,
                    pending: word,
                });
            }
            if w.state == SlotState::Abandoned as u32 {
                self.free_abandoned(slot, word);
                return Err(SlotError::Abandoned);
            }
        }
        Err(SlotError::Stale {
            index,
            expected: generation,
            found: w,
        })
    }

    fn free_abandoned(&self, slot: &Slot<V>, abandoned: u64) -> bool {
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

    /// Server side: writes the response and hands it to the owner, waking it
    /// if it sleeps.
    pub fn complete<P: Parker>(
        &self,
        begun: Begun,
        response: Response<V>,
        parker: &P,
    ) -> Completion {
        self.complete_parts(begun, &response, true, parker)
    }

    /// [`SlotTable::complete`], writing the value only if `with_value` (the
    /// owner of a request that returns no value does not read it).
    pub fn complete_parts<P: Parker>(
        &self,
        begun: Begun,
        response: &Response<V>,
        with_value: bool,
        parker: &P,
    ) -> Completion {
        let slot = self.own_slot(begun.index);
        // SAFETY: `begin` saw `Pending` for this generation, and in `Pending`
        // only the server writes the response (see the module docs); the owner
        // reads it only after our CAS to `Ready` below. Field pointers stay
        // inside the response.
        slot.response.with_mut(|p| unsafe {
            std::ptr::addr_of_mut!((*p).status).write(response.status);
            std::ptr::addr_of_mut!((*p).aux).write(response.aux);
            std::ptr::addr_of_mut!((*p).version).write(response.version);
            std::ptr::addr_of_mut!((*p).modified_ns).write(response.modified_ns);
            if with_value {
                std::ptr::addr_of_mut!((*p).value).write(response.value);
            }
        });
        let w = SlotWord::unpack(begun.pending);
        let ready = pack(w.generation, w.owner, SlotState::Ready);
        // SeqCst: Release publishes the response (pairs with the client's
        // Acquire in `poll`/`wait`), and SeqCst orders it before the load of
        // `sleepers` below (the Dekker pair with `wait`).
        match slot
            .word
            .compare_exchange(begun.pending, ready, Ordering::SeqCst, Ordering::Relaxed)
        {
            Ok(_) => {
                loom_sc_fence();
                if slot.sleepers.load(Ordering::SeqCst) != 0 {
                    slot.sleepers.store(0, Ordering::Relaxed);
                    parker.wake(&slot.sleepers, u32::MAX);
                }
                Completion::Delivered
            }
            Err(current) => {
                let abandoned = pack(w.generation, w.owner, SlotState::Abandoned);
                if current == abandoned && self.free_abandoned(slot, abandoned) {
                    Completion::Abandoned
                } else {
                    Completion::Stale
                }
            }
        }
    }

    /// Server side: frees what a dead owner left behind, and abandoned slots
    /// no worker is answering. Returns how many slots were freed.
    ///
    /// * `owner_dead(owner)` says whether a registration index belongs to a
    ///   dead client;
    /// * `busy(index)` says whether a worker is between `begin` and
    ///   `complete` on that slot (checked after the SeqCst CAS that marks a
    ///   slot abandoned; workers publish the slot before their SeqCst load in
    ///   `begin`, so one side always sees the other).
    pub fn reclaim(&self, owner_dead: impl Fn(u32) -> bool, busy: impl Fn(u32) -> bool) -> usize {
        let mut freed = 0;
        for (index, slot) in self.slots.iter().enumerate() {
            let index = index as u32;
            let word = slot.word.load(Ordering::SeqCst);
            let w = SlotWord::unpack(word);
            let free = pack(w.generation, w.owner, SlotState::Free);
            let state = SlotState::try_from(w.state);
            let dead = || owner_dead(w.owner);
            let target = match state {
                Ok(SlotState::Free) => continue,
                // Claimed: the request was never pushed. Ready: nobody will take it.
                Ok(SlotState::Claimed | SlotState::Ready) if dead() => free,
                Ok(SlotState::Pending) if dead() => {
                    let abandoned = pack(w.generation, w.owner, SlotState::Abandoned);
                    // SeqCst: half of the Dekker pair with the worker's busy mark.
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
                // generation so no request for it can match).
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
pub struct SlotTableBuffer<V> {
    header: SlotTableHeader,
    slots: Box<[CachePadded<Slot<V>>]>,
}

impl<V> fmt::Debug for SlotTableBuffer<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotTableBuffer")
            .field("len", &self.slots.len())
            .finish()
    }
}

impl<V: Copy + bytemuck::Zeroable> SlotTableBuffer<V> {
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
    pub fn table(&self) -> SlotTable<'_, V> {
        SlotTable::new(&self.header, &self.slots)
    }

    #[cfg(all(test, not(loom)))]
    fn set_word(&self, index: usize, generation: u32, owner: u32, state: SlotState) {
        self.slots[index]
            .word
            .store(pack(generation, owner, state), Ordering::SeqCst);
    }
}

// SAFETY: the response is handed between threads only through the slot
// protocol (Release/Acquire on the word); `V: Send` suffices.
unsafe impl<V: Send> Sync for SlotTableBuffer<V> {}
// SAFETY: as above.
unsafe impl<V: Send> Send for SlotTable<'_, V> {}
// SAFETY: as above.
unsafe impl<V: Send> Sync for SlotTable<'_, V> {}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::protocol::StatusCode;
    use crate::wait::{FutexParker, SpinParker};
    use std::time::Duration;

    fn ok(v: u64) -> Response<u64> {
        Response {
            status: StatusCode::Ok as u32,
            aux: 0,
            version: 1,
            modified_ns: 0,
            value: v,
        }
    }

    #[test]
    fn full_cycle_frees_the_slot() {
        let buf = SlotTableBuffer::<u64>::new(2);
        let t = buf.table();
        let c = t.claim(3).unwrap();
        assert_eq!(c.generation, 1);
        t.mark_pending(&c);
        assert!(matches!(t.poll(&c), Poll::Pending));
        let b = t.begin(c.index, c.generation).unwrap();
        assert_eq!(b.owner(), 3);
        assert_eq!(t.complete(b, ok(9), &SpinParker), Completion::Delivered);
        match t.poll(&c) {
            Poll::Ready(r) => assert_eq!(r.value, 9),
            other => panic!("{other:?}"),
        }
        assert_eq!(t.free_count(), 2);
    }

    #[test]
    fn claim_returns_none_when_all_slots_are_in_use() {
        let buf = SlotTableBuffer::<u64>::new(3);
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
    fn server_drops_answer_of_abandoned_request() {
        let buf = SlotTableBuffer::<u64>::new(1);
        let t = buf.table();
        let c = t.claim(0).unwrap();
        t.mark_pending(&c);
        let b = t.begin(c.index, c.generation).unwrap();
        assert!(t.abandon(&c).is_none());
        assert_eq!(t.complete(b, ok(1), &SpinParker), Completion::Abandoned);
        assert_eq!(t.free_count(), 1);
    }

    #[test]
    fn abandon_after_ready_takes_the_answer() {
        let buf = SlotTableBuffer::<u64>::new(1);
        let t = buf.table();
        let c = t.claim(0).unwrap();
        t.mark_pending(&c);
        let b = t.begin(c.index, c.generation).unwrap();
        t.complete(b, ok(5), &SpinParker);
        assert_eq!(t.abandon(&c).map(|r| r.value), Some(5));
        assert_eq!(t.free_count(), 1);
    }

    #[test]
    fn begin_frees_abandoned_and_rejects_stale_or_out_of_range() {
        let buf = SlotTableBuffer::<u64>::new(2);
        let t = buf.table();
        let c = t.claim(0).unwrap();
        t.mark_pending(&c);
        t.abandon(&c);
        assert_eq!(t.begin(c.index, c.generation), Err(SlotError::Abandoned));
        assert_eq!(t.free_count(), 2);
        // The same request again is stale now.
        assert!(matches!(
            t.begin(c.index, c.generation),
            Err(SlotError::Stale { .. })
        ));
        assert!(matches!(
            t.begin(7, 0),
            Err(SlotError::OutOfRange { index: 7, len: 2 })
        ));
    }

    #[test]
    fn stale_answer_never_reaches_a_later_claim() {
        let buf = SlotTableBuffer::<u64>::new(1);
        let t = buf.table();
        let old = t.claim(0).unwrap();
        t.mark_pending(&old);
        t.abandon(&old);
        // The reclaimer frees the abandoned slot; a new client claims it.
        assert_eq!(t.reclaim(|_| false, |_| false), 1);
        let new = t.claim(1).unwrap();
        assert_eq!(new.index, old.index);
        assert_ne!(new.generation, old.generation);
        t.mark_pending(&new);
        // The old request arrives late: refused.
        assert!(t.begin(old.index, old.generation).is_err());
        let b = t.begin(new.index, new.generation).unwrap();
        t.complete(b, ok(2), &SpinParker);
        assert!(matches!(t.poll(&new), Poll::Ready(r) if r.value == 2));
    }

    #[test]
    fn generation_wraps() {
        let buf = SlotTableBuffer::<u64>::new(1);
        buf.set_word(0, u32::MAX, 0, SlotState::Free);
        let t = buf.table();
        let c = t.claim(0).unwrap();
        assert_eq!(c.generation, 0);
        t.mark_pending(&c);
        assert!(t.begin(0, u32::MAX).is_err());
        assert!(t.begin(0, 0).is_ok());
    }

    #[test]
    fn reclaim_frees_what_dead_owners_left() {
        let buf = SlotTableBuffer::<u64>::new(5);
        buf.set_word(0, 4, 7, SlotState::Claimed);
        buf.set_word(1, 4, 7, SlotState::Pending);
        buf.set_word(2, 4, 7, SlotState::Ready);
        buf.set_word(3, 4, 8, SlotState::Pending); // alive owner
        buf.slots[4]
            .word
            .store(0xffff_ffff_ffff_ff77, Ordering::SeqCst); // garbage
        let t = buf.table();
        assert_eq!(t.reclaim(|o| o == 7, |_| false), 4);
        assert_eq!(t.free_count(), 4);
        assert_eq!(t.word(3).unwrap().state, SlotState::Pending as u32);
    }

    #[test]
    fn reclaim_leaves_slots_a_worker_is_answering() {
        let buf = SlotTableBuffer::<u64>::new(1);
        buf.set_word(0, 4, 7, SlotState::Pending);
        let t = buf.table();
        assert_eq!(t.reclaim(|_| true, |_| true), 0);
        assert_eq!(t.word(0).unwrap().state, SlotState::Abandoned as u32);
    }

    #[test]
    fn wait_times_out_and_frees_after_server_answers() {
        let buf = SlotTableBuffer::<u64>::new(1);
        let t = buf.table();
        let c = t.claim(0).unwrap();
        t.mark_pending(&c);
        let deadline = Some(Instant::now() + Duration::from_millis(30));
        let out = t.wait(
            &c,
            SpinPolicy {
                spins: 10,
                yields: 1,
            },
            &FutexParker,
            deadline,
            || true,
        );
        assert!(matches!(out, WaitOutcome::TimedOut));
        assert!(t.begin(c.index, c.generation).is_err());
        assert_eq!(t.free_count(), 1);
    }

    #[test]
    fn wait_reports_a_dead_server() {
        let buf = SlotTableBuffer::<u64>::new(1);
        let t = buf.table();
        let c = t.claim(0).unwrap();
        t.mark_pending(&c);
        let out = t.wait(
            &c,
            SpinPolicy {
                spins: 10,
                yields: 1,
            },
            &FutexParker,
            None,
            || false,
        );
        assert!(matches!(out, WaitOutcome::ServerGone));
    }

    #[test]
    fn sleeping_waiter_is_woken_by_complete() {
        let buf = SlotTableBuffer::<u64>::new(1);
        let t = buf.table();
        let c = t.claim(0).unwrap();
        t.mark_pending(&c);
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                let b = t.begin(c.index, c.generation).unwrap();
                t.complete(b, ok(11), &FutexParker);
            });
            let out = t.wait(
                &c,
                SpinPolicy {
                    spins: 1,
                    yields: 0,
                },
                &FutexParker,
                Some(Instant::now() + Duration::from_secs(10)),
                || true,
            );
            assert!(matches!(out, WaitOutcome::Ready(r) if r.value == 11));
        });
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::protocol::StatusCode;
    use crate::wait::SpinParker;
    use loom::sync::Arc;
    use loom::thread;

    fn resp(v: u64) -> Response<u64> {
        Response {
            status: StatusCode::Ok as u32,
            aux: 0,
            version: 0,
            modified_ns: 0,
            value: v,
        }
    }

    /// A parker that really blocks: `wait` parks the thread (if the word
    /// still holds `expected`), `wake` unparks it. A lost wake-up leaves the
    /// waiter parked forever, which loom reports as a deadlock.
    struct ParkParker {
        waiter: loom::sync::Mutex<Option<thread::Thread>>,
    }

    impl Parker for ParkParker {
        fn wait(&self, word: &AtomicU32, expected: u32, _timeout: Option<std::time::Duration>) {
            if word.load(Ordering::SeqCst) == expected {
                thread::park();
            }
        }

        fn wake(&self, _word: &AtomicU32, _count: u32) {
            if let Some(t) = self.waiter.lock().unwrap().as_ref() {
                t.unpark();
            }
        }
    }

    /// The Dekker pair of `wait` (announce in `sleepers`, re-check, sleep)
    /// and `complete` (CAS to Ready, check `sleepers`, wake): however they
    /// interleave, the waiter is woken or sees the answer before sleeping.
    #[test]
    fn sleeping_waiter_is_never_left_asleep() {
        loom::model(|| {
            let buf = Arc::new(SlotTableBuffer::<u64>::new(1));
            let parker = Arc::new(ParkParker {
                waiter: loom::sync::Mutex::new(None),
            });
            let c = buf.table().claim(0).unwrap();
            buf.table().mark_pending(&c);
            *parker.waiter.lock().unwrap() = Some(thread::current());
            let (b2, p2) = (Arc::clone(&buf), Arc::clone(&parker));
            let server = thread::spawn(move || {
                let t = b2.table();
                let b = t.begin(c.index, c.generation).unwrap();
                t.complete(b, resp(3), &*p2)
            });
            let no_spin = SpinPolicy {
                spins: 0,
                yields: 0,
            };
            let out = buf.table().wait(&c, no_spin, &*parker, None, || true);
            assert!(matches!(out, WaitOutcome::Ready(r) if r.value == 3));
            assert_eq!(server.join().unwrap(), Completion::Delivered);
        });
    }

    /// The server completes while the client abandons: exactly one of
    /// "client got the answer" or "server freed the slot" happens, and the
    /// slot always ends free.
    #[test]
    fn complete_races_abandon() {
        loom::model(|| {
            let buf = Arc::new(SlotTableBuffer::<u64>::new(1));
            let c = buf.table().claim(0).unwrap();
            buf.table().mark_pending(&c);
            let b2 = Arc::clone(&buf);
            let server = thread::spawn(move || {
                let t = b2.table();
                match t.begin(c.index, c.generation) {
                    Ok(b) => Some(t.complete(b, resp(7), &SpinParker)),
                    Err(_) => None,
                }
            });
            let got = buf.table().abandon(&c);
            let completion = server.join().unwrap();
            match (got, completion) {
                (Some(r), Some(Completion::Delivered)) => assert_eq!(r.value, 7),
                (None, Some(Completion::Abandoned)) | (None, None) => {}
                other => panic!("unexpected outcome {other:?}"),
            }
            assert_eq!(buf.table().free_count(), 1);
        });
    }

    /// A slot freed by one client is claimed by another while the server
    /// answers a stale request for the old generation: the new owner never
    /// sees that answer.
    #[test]
    fn claim_after_free_never_sees_stale_answer() {
        loom::model(|| {
            let buf = Arc::new(SlotTableBuffer::<u64>::new(1));
            let old = buf.table().claim(0).unwrap();
            buf.table().mark_pending(&old);
            buf.table().abandon(&old);
            let b2 = Arc::clone(&buf);
            let server = thread::spawn(move || {
                let t = b2.table();
                if let Ok(b) = t.begin(old.index, old.generation) {
                    t.complete(b, resp(666), &SpinParker);
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
                    new = Some(c);
                    break;
                }
                thread::yield_now();
            }
            server.join().unwrap();
            reclaimer.join().unwrap();
            if let Some(new) = new {
                assert_ne!(new.generation, old.generation);
                t.mark_pending(&new);
                assert!(matches!(t.poll(&new), Poll::Pending));
                let b = t.begin(new.index, new.generation).unwrap();
                t.complete(b, resp(1), &SpinParker);
                assert!(matches!(t.poll(&new), Poll::Ready(r) if r.value == 1));
            }
        });
    }

    /// Generation wrap-around: a request from generation `u32::MAX` cannot
    /// complete the wrapped generation 0 of the same slot.
    #[test]
    fn generation_wrap() {
        loom::model(|| {
            let buf = Arc::new(SlotTableBuffer::<u64>::new(1));
            buf.slots[0]
                .word
                .store(pack(u32::MAX, 0, SlotState::Pending), Ordering::SeqCst);
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
                    t.mark_pending(&c);
                }
                c
            });
            let t = buf.table();
            if let Ok(b) = t.begin(0, u32::MAX) {
                t.complete(b, resp(5), &SpinParker);
            }
            if let Some(c) = client.join().unwrap() {
                assert_eq!(c.generation, 0);
                assert!(matches!(t.poll(&c), Poll::Pending));
            }
        });
    }
}
