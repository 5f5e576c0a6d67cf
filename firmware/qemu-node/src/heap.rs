//! The fixed heap: embedded-alloc's linked-list allocator over a static array, wrapped to keep
//! the high-water mark (the most bytes in use at once since boot).

use core::alloc::{GlobalAlloc, Layout};
use core::mem::MaybeUninit;

use embedded_alloc::LlffHeap;
use portable_atomic::{AtomicUsize, Ordering};

/// Heap size. Larger than the 64 KiB budget on purpose: the high-water mark is measured, not
/// imposed, and a budget overrun shows as a figure instead of an allocation failure.
pub const HEAP_SIZE: usize = 256 * 1024;

/// The global allocator with its high-water mark.
pub struct TrackedHeap {
    heap: LlffHeap,
    peak: AtomicUsize,
}

impl TrackedHeap {
    /// An empty heap; [`TrackedHeap::init`] gives it memory.
    pub const fn empty() -> Self {
        TrackedHeap {
            heap: LlffHeap::empty(),
            peak: AtomicUsize::new(0),
        }
    }

    /// Hands the static heap array to the allocator. Call once, before the first allocation.
    pub fn init(&self) {
        static mut MEMORY: [MaybeUninit<u8>; HEAP_SIZE] = [MaybeUninit::uninit(); HEAP_SIZE];
        // SAFETY: called once at boot, before anything allocates; the array is used only here.
        unsafe { self.heap.init(&raw mut MEMORY as usize, HEAP_SIZE) }
    }

    /// Bytes in use now.
    pub fn used(&self) -> usize {
        self.heap.used()
    }

    /// The most bytes in use at once since boot.
    pub fn high_water(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }
}

// SAFETY: forwards to embedded-alloc's heap (which takes a critical section per call).
unsafe impl GlobalAlloc for TrackedHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { self.heap.alloc(layout) };
        self.peak.fetch_max(self.heap.used(), Ordering::Relaxed);
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { self.heap.dealloc(ptr, layout) }
    }
}
