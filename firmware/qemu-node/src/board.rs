//! The QEMU `virt` machine (riscv32) as this firmware uses it: 16550 UARTs as mesh links,
//! the CLINT's `mtime` as the node's clock, and fixed RAM pages for the boot configuration and
//! the emulated flash. Register pokes are our own: a few volatile accesses each, simpler than
//! adapting a driver crate to memory-mapped *and* PCI I/O-window 16550s.

use core::ptr::{read_volatile, write_volatile};

/// QEMU's loader device writes the node id here before the CPU starts
/// (`-device loader,addr=0x80f00000,data=<id>,data-len=4`); outside every linker region.
pub const BOOT_CONFIG: usize = 0x80f0_0000;
/// The emulated flash (4 MiB of RAM above the program; `-m 32M`).
pub const FLASH_BASE: usize = 0x8100_0000;
/// Size of the emulated flash.
pub const FLASH_SIZE: usize = 4 << 20;

const UART0: usize = 0x1000_0000;
const CLINT_MTIMECMP: usize = 0x0200_4000;
const CLINT_MTIME: usize = 0x0200_bff8;
/// `mtime` runs at 10 MHz on `virt`.
const MTIME_HZ: u64 = 10_000_000;
const PCIE_ECAM: usize = 0x3000_0000;
const PCIE_PIO: usize = 0x0300_0000;
/// QEMU's `pci-serial` device: a 16550 behind an I/O BAR.
const PCI_SERIAL_ID: u32 = 0x0002_1b36;

/// The node id QEMU's loader put into the boot configuration page (0: none given).
pub fn node_id() -> u32 {
    // SAFETY: a RAM page inside `-m 32M` that nothing else uses.
    unsafe { read_volatile(BOOT_CONFIG as *const u32) }
}

/// A 16550 UART: one mesh link (QEMU connects it to a TCP socket on the host).
#[derive(Debug)]
pub struct Uart {
    base: usize,
}

const RBR_THR: usize = 0;
const IER: usize = 1;
const FCR: usize = 2;
const LCR: usize = 3;
const LSR: usize = 5;
const LSR_DATA_READY: u8 = 0x01;
const LSR_THR_EMPTY: u8 = 0x20;

impl Uart {
    fn at(base: usize) -> Uart {
        let u = Uart { base };
        // Divisor 1: the fastest line QEMU models, so its receive timeout (4 characters) is
        // about 100 µs instead of 4 ms at the reset rate.
        u.set(LCR, 0x80);
        u.set(RBR_THR, 1);
        u.set(IER, 0);
        u.set(LCR, 0x03); // 8N1
        // FIFOs on, cleared, trigger level 14: QEMU hands over up to 14 bytes per socket read
        // (it offers the guest only as many bytes as the trigger level).
        u.set(FCR, 0xc7);
        // "Data received" interrupt: through the PLIC it ends `sleep_until`'s WFI.
        u.set(IER, 0x01);
        u
    }

    /// The `virt` machine's own UART.
    pub fn uart0() -> Uart {
        Uart::at(UART0)
    }

    fn get(&self, reg: usize) -> u8 {
        // SAFETY: a 16550 register of a device this firmware owns.
        unsafe { read_volatile((self.base + reg) as *const u8) }
    }

    fn set(&self, reg: usize, v: u8) {
        // SAFETY: as in `get`.
        unsafe { write_volatile((self.base + reg) as *mut u8, v) }
    }

    /// Reads what has arrived, up to `buf.len()` bytes; returns the count (0: nothing yet).
    pub fn read(&self, buf: &mut [u8]) -> usize {
        let mut n = 0;
        while n < buf.len() && self.get(LSR) & LSR_DATA_READY != 0 {
            buf[n] = self.get(RBR_THR);
            n += 1;
        }
        n
    }

    /// Writes every byte, waiting while the transmitter is busy (QEMU holds it busy while the
    /// host socket cannot take more).
    pub fn write_all(&self, data: &[u8]) {
        for &b in data {
            while self.get(LSR) & LSR_THR_EMPTY == 0 {}
            self.set(RBR_THR, b);
        }
    }
}

fn ecam(dev: usize, reg: usize) -> *mut u32 {
    (PCIE_ECAM + (dev << 15) + reg) as *mut u32
}

/// The `pci-serial` devices on PCI bus 0 (`-device pci-serial,chardev=...`), in slot order,
/// each given an I/O window and returned as a UART. No firmware runs before us, so we assign
/// the BARs ourselves.
pub fn pci_uarts(out: &mut [Option<Uart>]) -> usize {
    let mut found = 0;
    for dev in 0..32 {
        if found == out.len() {
            break;
        }
        // SAFETY: the ECAM window of `virt`'s PCIe host bridge; absent slots read all-ones.
        let id = unsafe { read_volatile(ecam(dev, 0)) };
        if id != PCI_SERIAL_ID {
            continue;
        }
        let io = 0x1000 + 0x100 * found;
        // SAFETY: BAR0 and the command register of the device just found.
        unsafe {
            write_volatile(ecam(dev, 0x10), io as u32);
            let cmd = read_volatile(ecam(dev, 0x04));
            write_volatile(ecam(dev, 0x04), cmd | 0x1); // decode I/O space
        }
        out[found] = Some(Uart::at(PCIE_PIO + io));
        found += 1;
    }
    found
}

/// The machine timer (CLINT `mtime`, 10 MHz) as microseconds since reset.
pub fn now_us() -> u64 {
    ticks() / (MTIME_HZ / 1_000_000)
}

fn ticks() -> u64 {
    // rv32 reads the 64-bit counter in two halves: retry if the high half moved meanwhile.
    loop {
        // SAFETY: the CLINT's read-only `mtime` register.
        let (hi, lo, hi2) = unsafe {
            (
                read_volatile((CLINT_MTIME + 4) as *const u32),
                read_volatile(CLINT_MTIME as *const u32),
                read_volatile((CLINT_MTIME + 4) as *const u32),
            )
        };
        if hi == hi2 {
            return (u64::from(hi) << 32) | u64::from(lo);
        }
    }
}

fn set_timer(at_ticks: u64) {
    // SAFETY: hart 0's `mtimecmp`; the high half is parked at all-ones while the low half
    // changes, so no intermediate value fires early.
    unsafe {
        write_volatile((CLINT_MTIMECMP + 4) as *mut u32, u32::MAX);
        write_volatile(CLINT_MTIMECMP as *mut u32, at_ticks as u32);
        write_volatile((CLINT_MTIMECMP + 4) as *mut u32, (at_ticks >> 32) as u32);
    }
}

const PLIC: usize = 0x0c00_0000;
const PLIC_ENABLE_CTX0: usize = PLIC + 0x2000;
const PLIC_CLAIM_CTX0: usize = PLIC + 0x20_0004;
/// UART0's PLIC source, and the four PCI INTx lines (`pci-serial` interrupts land on one).
const UART0_IRQ: usize = 10;
const PCIE_IRQS: core::ops::Range<usize> = 32..36;

/// Routes the UARTs' interrupts to hart 0 so they end a WFI. Interrupts stay globally off
/// (`mstatus.MIE` clear): no handler ever runs, a pending source only wakes the core.
pub fn init_wakeups() {
    // SAFETY: the PLIC's priority and enable registers for hart 0's M-mode context, and `mie`.
    unsafe {
        for irq in core::iter::once(UART0_IRQ).chain(PCIE_IRQS) {
            write_volatile((PLIC + 4 * irq) as *mut u32, 1);
            let word = (PLIC_ENABLE_CTX0 + 4 * (irq / 32)) as *mut u32;
            write_volatile(word, read_volatile(word) | 1 << (irq % 32));
        }
        riscv::register::mie::set_mext();
        riscv::register::mie::set_mtimer();
    }
}

/// Sleeps (WFI) until `until_us` on the `mtime` clock or until a UART has received bytes.
pub fn sleep_until(until_us: u64) {
    set_timer(until_us.saturating_mul(MTIME_HZ / 1_000_000));
    if now_us() < until_us {
        riscv::asm::wfi();
    }
    set_timer(u64::MAX);
    // Acknowledge whatever woke us; a UART still holding data raises its source again.
    loop {
        // SAFETY: claim/complete of hart 0's M-mode PLIC context.
        let irq = unsafe { read_volatile(PLIC_CLAIM_CTX0 as *const u32) };
        if irq == 0 {
            break;
        }
        // SAFETY: as above.
        unsafe { write_volatile(PLIC_CLAIM_CTX0 as *mut u32, irq) };
    }
}
