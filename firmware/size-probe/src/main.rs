//! The size probe: a node fed bytes and time from volatile reads (so nothing is optimised
//! away), with the OTA plugin when the `ota` feature is on and an offer when `distributor` is.

#![no_std]
#![no_main]

extern crate alloc;

use core::ptr::read_volatile;

use embedded_alloc::LlffHeap;
use pmesh_node::{Config, ConnId, Direction, Instant, Node};

#[global_allocator]
static HEAP: LlffHeap = LlffHeap::empty();

/// Where the probe "receives" from: an address the compiler cannot see through.
const INPUT: usize = 0x8100_0000;

fn input() -> &'static [u8] {
    // SAFETY: never run; only the code size matters.
    unsafe { core::slice::from_raw_parts(INPUT as *const u8, read_volatile(INPUT as *const usize)) }
}

fn now() -> Instant {
    // SAFETY: as above.
    Instant::from_micros(unsafe { read_volatile((INPUT + 8) as *const u64) })
}

#[riscv_rt::entry]
fn main() -> ! {
    static mut MEMORY: [u8; 64 * 1024] = [0; 64 * 1024];
    // SAFETY: once, before any allocation.
    unsafe { HEAP.init(&raw mut MEMORY as usize, 64 * 1024) }
    let id = input().len() as u32;
    #[cfg(feature = "ota")]
    let mut node = Node::new(
        Config::new(id),
        pmesh_ota::Ota::new(
            pmesh_ota::OtaConfig::new("r", "h"),
            pmesh_ota::MemorySink::new(1 << 20),
            pmesh_ota::MemoryStore::new(),
        ),
    );
    #[cfg(not(feature = "ota"))]
    let mut node = Node::without_plugins(Config::new(id));
    node.handle_connect(ConnId(1), now(), Direction::Station);
    #[cfg(feature = "distributor")]
    node.with_plugin(now(), |ota, ctx| {
        let image = pmesh_ota::MemorySource::new(input());
        let offer = pmesh_ota::Offer::new("r", "h", image).compressed(id & 1 == 1);
        let offer = if id & 2 == 2 { offer.pmesh() } else { offer };
        let _ = ota.offer(ctx, offer);
    });
    #[cfg(feature = "signature")]
    verify_signed(input());
    loop {
        node.handle_bytes(ConnId(1), now(), input());
        node.handle_timeout(now());
        while let Some(t) = node.poll_transmit() {
            core::hint::black_box(t);
        }
        while let Some(e) = node.poll_event() {
            core::hint::black_box(e);
        }
        let _ = node.send_single(now(), id, input());
        let _ = node.send_broadcast(now(), input(), false);
    }
}

/// What a node does with a signed manifest, a digest page and a chunk (the agent's calls).
#[cfg(feature = "signature")]
fn verify_signed(bytes: &[u8]) {
    use pmesh_ota::signed::{DigestPage, Policy, SignedManifest, TrustedKey, verify_signature};
    let Ok(key) = <[u8; 32]>::try_from(&bytes[..32.min(bytes.len())]) else {
        return;
    };
    let keys = [TrustedKey::from_bytes(key)];
    let Ok((m, used)) = SignedManifest::decode(bytes) else {
        return;
    };
    let policy = Policy {
        role: "r",
        hardware: "h",
        confirmed: Some(1),
        now_unix: None,
    };
    if verify_signature(&m, &keys).is_err() || policy.check(&m.body).is_err() {
        return;
    }
    let page = &bytes[used..used + 1024];
    if let Ok(p) = DigestPage::verify(&m.body, 0, page, &[]) {
        core::hint::black_box(p.check_chunk(0, &bytes[..4096]).is_ok());
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}
