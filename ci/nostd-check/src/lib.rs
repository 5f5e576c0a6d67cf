#![no_std]

extern crate alloc;

use core::alloc::{GlobalAlloc, Layout};

struct NoAlloc;

// The check only has to link, never run: this allocator hands out no memory.
unsafe impl GlobalAlloc for NoAlloc {
    unsafe fn alloc(&self, _layout: Layout) -> *mut u8 {
        core::ptr::null_mut()
    }
    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
}

#[global_allocator]
static ALLOC: NoAlloc = NoAlloc;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

/// Uses the crates so they are really linked in.
#[unsafe(no_mangle)]
pub extern "C" fn pmesh_nostd_check(bytes: *const u8, len: usize) -> u32 {
    let data = unsafe { core::slice::from_raw_parts(bytes, len) };
    let mut node = pmesh_node::Node::without_plugins(pmesh_node::Config::new(1));
    node.handle_connect(
        pmesh_node::ConnId(1),
        pmesh_node::Instant::ZERO,
        pmesh_node::Direction::Ap,
    );
    node.handle_bytes(pmesh_node::ConnId(1), pmesh_node::Instant::ZERO, data);
    let flash = pmesh_flash::EmulatedFlash::new(alloc::vec![0u8; 1 << 16]);
    let ota = pmesh_ota::Ota::new(
        pmesh_ota::OtaConfig::new("r", "h"),
        pmesh_flash::FlashSink::new(flash),
        pmesh_ota::MemoryStore::new(),
    );
    let mut ota_node = pmesh_node::Node::new(pmesh_node::Config::new(2), ota);
    ota_node.handle_connect(
        pmesh_node::ConnId(1),
        pmesh_node::Instant::ZERO,
        pmesh_node::Direction::Ap,
    );
    ota_node.handle_bytes(pmesh_node::ConnId(1), pmesh_node::Instant::ZERO, data);
    match pmesh_proto::Envelope::parse(data, 255) {
        Ok(env) => env.dest,
        Err(_) => 0,
    }
}
