//! A bare-metal pmesh node for QEMU's riscv32 `virt` machine (built for riscv32imc, the
//! ESP32-C3's ISA): no OS, no std. Its clock is the CLINT timer, its heap a fixed array, its
//! mesh links 16550 UARTs that QEMU connects to TCP sockets on the host, and its OTA sink an
//! emulated NOR flash. The console is semihosting (QEMU's stdout): one line per event, which
//! the real-process test in `crates/cli/tests/qemu_node.rs` reads.
//!
//! Links: UART0 dials the host (`-serial tcp:127.0.0.1:PORT`, QEMU connects to a listening
//! `pmesh node`: this node is the station); every `pci-serial` device is a link on which this
//! node accepts (`-chardev socket,server=on,...`, a `pmesh node --connect` dials it).

#![no_std]
#![no_main]

extern crate alloc;

mod board;
mod heap;

use alloc::vec::Vec;
use core::time::Duration;

use pmesh_flash::{EmulatedFlash, FlashSink};
use pmesh_node::{Config, ConnId, Direction, Event, Instant, Node, Transmit};
use pmesh_ota::{MemoryStore, Ota, OtaConfig, OtaEvent};
use semihosting::println;
use sha2::{Digest, Sha256};

use crate::board::Uart;
use crate::heap::TrackedHeap;

#[global_allocator]
static HEAP: TrackedHeap = TrackedHeap::empty();

/// OTA role and hardware this node installs images for.
const ROLE: &str = "qemu";
const HARDWARE: &str = "QEMU-RV32IMC";
/// UART0 plus up to this many `pci-serial` links.
const MAX_PCI_LINKS: usize = 3;
/// After the node closes its station link (a UART cannot close), it starts it again this much
/// later, as a station re-dials.
const REDIAL_AFTER_US: u64 = 1_000_000;

type OtaPlugin = Ota<FlashSink<EmulatedFlash<&'static mut [u8]>>, MemoryStore>;

/// One mesh link: a UART and the connection the node knows it as.
struct Link {
    uart: Uart,
    direction: Direction,
    state: LinkState,
}

/// Where a link stands. A UART never learns that the host's TCP socket connected or closed:
/// a station link starts at once (QEMU connected before the CPU started), an accepting link
/// starts with the peer's first bytes (a station speaks first: its NODE_SYNC request).
#[derive(Clone, Copy, PartialEq, Eq)]
enum LinkState {
    /// The node runs this connection.
    Up(ConnId),
    /// Waiting for the peer's first bytes.
    Listening,
    /// The node closed the link; a station link starts again at this time (µs).
    Closed { redial_at: u64 },
}

#[riscv_rt::entry]
fn main() -> ! {
    HEAP.init();
    let id = board::node_id();
    if id == 0 {
        println!(
            "pmesh-qemu: no node id (QEMU: -device loader,addr=0x80f00000,data=ID,data-len=4)"
        );
        semihosting::process::exit(2);
    }
    // SAFETY: the emulated flash's RAM, outside every linker region, handed out once here.
    let region =
        unsafe { core::slice::from_raw_parts_mut(board::FLASH_BASE as *mut u8, board::FLASH_SIZE) };
    let sink = FlashSink::new(EmulatedFlash::new(region));
    let ota = Ota::new(ota_config(), sink, MemoryStore::new());
    let mut node = Node::new(node_config(id), ota);

    let mut links = Vec::new();
    links.push(Link {
        uart: Uart::uart0(),
        direction: Direction::Station,
        state: LinkState::Closed { redial_at: 0 },
    });
    let mut pci: [Option<Uart>; MAX_PCI_LINKS] = Default::default();
    board::pci_uarts(&mut pci);
    for uart in pci.into_iter().flatten() {
        links.push(Link {
            uart,
            direction: Direction::Ap,
            state: LinkState::Listening,
        });
    }
    board::init_wakeups();
    println!(
        "pmesh-qemu: node {id} up: {} links, heap {} KiB, flash {} KiB, role {ROLE:?} hardware {HARDWARE:?}",
        links.len(),
        heap::HEAP_SIZE / 1024,
        board::FLASH_SIZE / 1024
    );
    run(&mut node, &mut links)
}

fn node_config(id: u32) -> Config {
    let mut cfg = Config::new(id);
    // Frames past 32 KiB are cut and counted: an MCU does not buffer a host's 256 KiB.
    cfg.max_frame = 32 * 1024;
    // A host dialling in waits less for our first NODE_SYNC than the reference's 10 s.
    cfg.ap_first_sync_delay = Duration::from_millis(500);
    // Events are drained every loop; a short queue is plenty.
    cfg.max_queued_events = 64;
    cfg
}

fn ota_config() -> OtaConfig {
    let mut cfg = OtaConfig::new(ROLE, HARDWARE);
    // Chunk frames kept to forward to slower neighbours: 4 (about 22 KB at 4 KiB chunks)
    // instead of the host's 16, which alone would take the 64 KiB heap budget.
    cfg.pmesh.cache_frames = 4;
    cfg
}

/// The node's loop: read links, run timers, write what the node sends, report events, sleep.
fn run(node: &mut Node<OtaPlugin>, links: &mut [Link]) -> ! {
    let mut rx = [0u8; 512];
    let mut next_conn = 1;
    let mut new_conn = || {
        next_conn += 1;
        ConnId(next_conn - 1)
    };
    loop {
        let now_us = board::now_us();
        let now = Instant::from_micros(now_us);
        let mut busy = false;
        for l in links.iter_mut() {
            if let LinkState::Closed { redial_at } = l.state
                && redial_at <= now_us
            {
                l.state = LinkState::Up(new_conn());
                node.handle_connect(l.conn_id(), now, l.direction);
            }
            let n = l.uart.read(&mut rx);
            if n == 0 {
                continue;
            }
            busy = true;
            if l.state == LinkState::Listening {
                l.state = LinkState::Up(new_conn());
                node.handle_connect(l.conn_id(), now, l.direction);
            }
            if let LinkState::Up(conn) = l.state {
                node.handle_bytes(conn, now, &rx[..n]);
            }
        }
        if node.poll_timeout().is_some_and(|t| t <= now) {
            node.handle_timeout(now);
        }
        while let Some(t) = node.poll_transmit() {
            transmit(links, t, now_us);
        }
        while let Some(ev) = node.poll_event() {
            report(node, now, ev);
        }
        if !busy {
            let deadline = node.poll_timeout().map_or(u64::MAX, Instant::as_micros);
            let redial = links.iter().filter_map(|l| match l.state {
                LinkState::Closed { redial_at } => Some(redial_at),
                _ => None,
            });
            board::sleep_until(redial.fold(deadline, u64::min));
        }
    }
}

impl Link {
    fn conn_id(&self) -> ConnId {
        match self.state {
            LinkState::Up(c) => c,
            _ => ConnId(0),
        }
    }
}

/// Writes to the link a transmit names, or marks it closed.
fn transmit(links: &mut [Link], t: Transmit, now_us: u64) {
    match t {
        Transmit::Send { conn, data } => {
            if let Some(l) = links.iter().find(|l| l.state == LinkState::Up(conn)) {
                l.uart.write_all(&data);
            }
        }
        Transmit::Close { conn, reason } => {
            if let Some(l) = links.iter_mut().find(|l| l.state == LinkState::Up(conn)) {
                // The host side stays connected: a station link starts over after a pause,
                // an accepting one with the next bytes its peer sends.
                l.state = match l.direction {
                    Direction::Station => LinkState::Closed {
                        redial_at: now_us + REDIAL_AFTER_US,
                    },
                    Direction::Ap => LinkState::Listening,
                };
                println!("link {}: closed ({reason:?})", conn.0);
            }
        }
    }
}

/// One console line per event the test or a person watching cares about.
fn report(node: &mut Node<OtaPlugin>, now: Instant, ev: Event<OtaEvent>) {
    match ev {
        Event::NewConnection { node_id, conn } => {
            println!("link {}: node {node_id} connected", conn.0)
        }
        Event::DroppedConnection {
            node_id,
            conn,
            reason,
        } => println!("link {}: node {node_id} dropped ({reason:?})", conn.0),
        Event::TimeAdjusted { offset } => println!(
            "time: adjusted by {offset} us, mesh time now {}",
            node.mesh_time(now)
        ),
        Event::Received {
            from,
            msg,
            broadcast,
        } => {
            let kind = if broadcast { "broadcast" } else { "single" };
            println!(
                "received {kind} from {from}: {}",
                core::str::from_utf8(&msg).unwrap_or("<not UTF-8>")
            );
            // A SINGLE "ping" is answered, so a test sees this node send as well as relay.
            if !broadcast && msg == b"ping" {
                let reply = alloc::format!(
                    "pong from {} at mesh time {}",
                    node.id(),
                    node.mesh_time(now)
                );
                let _ = node.send_single(now, from, reply);
            }
        }
        Event::Plugin(ev) => report_ota(node, ev),
        _ => {}
    }
}

fn report_ota(node: &Node<OtaPlugin>, ev: OtaEvent) {
    match ev {
        OtaEvent::Accepted {
            id,
            chunks,
            resumed_from,
        } => println!(
            "ota: accepted {} {:08x}: {chunks} chunks (resumed from {resumed_from}); heap in use {} B",
            id.mode.name(),
            id.id,
            HEAP.used()
        ),
        OtaEvent::Progress { id, done, total } if done * 4 % total < 4 => println!(
            "ota: {} {:08x}: {done}/{total} chunks; heap high-water {} B",
            id.mode.name(),
            id.id,
            HEAP.high_water()
        ),
        OtaEvent::Installed { id, image } => {
            let sink = node.plugin().sink();
            let (flash_sha, len) = match sink.running_image() {
                Some((base, len)) => {
                    let bytes = &sink.flash().contents()[base as usize..][..len as usize];
                    (hex(&Sha256::digest(bytes)), len)
                }
                None => (alloc::string::String::from("?"), 0),
            };
            let flash = sink.flash().stats();
            println!(
                "ota: installed {} {:08x}: {len} bytes, sha256 of the flash slot {flash_sha}, recorded sha256 {} md5 {} version {:?}; heap high-water {} B, in use {} B; flash: {} sectors erased, {} bytes programmed",
                id.mode.name(),
                id.id,
                image.sha256,
                image.md5,
                image.version,
                HEAP.high_water(),
                HEAP.used(),
                flash.sectors_erased,
                flash.bytes_programmed
            );
        }
        OtaEvent::Refused { id, reason } => {
            println!("ota: refused {} {:08x}: {reason}", id.mode.name(), id.id)
        }
        OtaEvent::Failed { id, reason } => {
            println!("ota: failed {} {:08x}: {reason}", id.mode.name(), id.id)
        }
        _ => {}
    }
}

fn hex(bytes: &[u8]) -> alloc::string::String {
    use core::fmt::Write;
    let mut s = alloc::string::String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    println!("pmesh-qemu: panic: {info}");
    semihosting::process::exit(101)
}
