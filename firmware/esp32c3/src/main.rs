//! A pmesh node on an ESP32-C3: it joins a painlessMesh as a WiFi station (the mesh's SSID and
//! password from `PMESH_MESH_SSID` / `PMESH_MESH_PASSWORD` at build time), dials its access
//! point's gateway on port 5555 as painlessMesh nodes do, and runs `pmesh_node::Node` with the
//! OTA plugin over that TCP link; images go to the `ota_0`/`ota_1` partitions and the chip
//! restarts into a verified one. The starting point for real devices: see README.md for what
//! is proven (it builds in CI; it has not run on hardware) and what is left.

#![no_std]
#![no_main]

extern crate alloc;

mod slots;

use embassy_executor::Spawner;
use embassy_futures::select::{Either, select};
use embassy_net::tcp::TcpSocket;
use embassy_net::{Runner, StackResources};
use embassy_time::{Duration, Timer};
use esp_backtrace as _;
use esp_hal::clock::CpuClock;
use esp_hal::interrupt::software::SoftwareInterruptControl;
use esp_hal::ram;
use esp_hal::rng::Rng;
use esp_hal::timer::timg::TimerGroup;
use esp_println::println;
use esp_radio::wifi::sta::StationConfig;
use esp_radio::wifi::{Config, ControllerConfig, Interface, WifiController};
use esp_storage::FlashStorage;
use pmesh_flash::FlashSink;
use pmesh_node::{ConnId, Direction, Event, Instant, Node, Transmit};
use pmesh_ota::{MemoryStore, Ota, OtaConfig, OtaEvent};

use crate::slots::{EspOtaSink, OtaSlots};

esp_bootloader_esp_idf::esp_app_desc!();

const MESH_SSID: &str = match option_env!("PMESH_MESH_SSID") {
    Some(s) => s,
    None => "whateverYouLike",
};
const MESH_PASSWORD: &str = match option_env!("PMESH_MESH_PASSWORD") {
    Some(s) => s,
    None => "somethingSneaky",
};
/// painlessMesh's TCP port.
const MESH_PORT: u16 = 5555;
/// OTA role of this firmware (offers name it).
const ROLE: &str = "esp32c3";
const HARDWARE: &str = "ESP32-C3";

type MeshNode = Node<Ota<EspOtaSink, MemoryStore>>;

macro_rules! mk_static {
    ($t:ty, $val:expr) => {{
        static CELL: static_cell::StaticCell<$t> = static_cell::StaticCell::new();
        CELL.uninit().write($val)
    }};
}

#[esp_rtos::main]
async fn main(spawner: Spawner) -> ! {
    let peripherals = esp_hal::init(esp_hal::Config::default().with_cpu_clock(CpuClock::max()));
    // WiFi's buffers and pmesh's (64 KiB budget while receiving an image) share these.
    esp_alloc::heap_allocator!(#[ram(reclaimed)] size: 64 * 1024);
    esp_alloc::heap_allocator!(size: 96 * 1024);

    let timg0 = TimerGroup::new(peripherals.TIMG0);
    let sw_int = SoftwareInterruptControl::new(peripherals.SW_INTERRUPT);
    esp_rtos::start(timg0.timer0, sw_int.software_interrupt0);

    let station = Config::Station(
        StationConfig::default()
            .with_ssid(MESH_SSID)
            .with_password(MESH_PASSWORD.into()),
    );
    let (controller, interfaces) = esp_radio::wifi::new(
        peripherals.WIFI,
        ControllerConfig::default().with_initial_config(station),
    )
    .expect("WiFi controller");
    // painlessMesh's node id: the last four bytes of the station MAC, big-endian.
    let mac = interfaces.station.mac_address();
    let node_id = u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]);
    let rng = Rng::new();
    let seed = (u64::from(rng.random()) << 32) | u64::from(rng.random());
    let (stack, runner) = embassy_net::new(
        interfaces.station,
        embassy_net::Config::dhcpv4(Default::default()),
        mk_static!(StackResources<3>, StackResources::<3>::new()),
        seed,
    );
    spawner.spawn(wifi_task(controller).expect("wifi task"));
    spawner.spawn(net_task(runner).expect("net task"));

    let (slots, running) = match OtaSlots::find(FlashStorage::new(peripherals.FLASH)) {
        Ok(found) => found,
        Err(e) => panic!("OTA partitions (flash partitions.csv): {e}"),
    };
    let sink = EspOtaSink(FlashSink::with_running_slot(slots, running));
    let mut ota_cfg = OtaConfig::new(ROLE, HARDWARE);
    ota_cfg.pmesh.cache_frames = 4; // as the QEMU node: keeps the heap high-water under 64 KiB
    let mut node_cfg = pmesh_node::Config::new(node_id);
    node_cfg.seed ^= seed;
    node_cfg.max_frame = 32 * 1024;
    node_cfg.max_queued_events = 64;
    let mut node = Node::new(node_cfg, Ota::new(ota_cfg, sink, MemoryStore::new()));
    println!("pmesh node {node_id} (ESP32-C3), booted from ota_{running}");

    let rx = mk_static!([u8; 4096], [0; 4096]);
    let tx = mk_static!([u8; 4096], [0; 4096]);
    let mut conn = 0;
    loop {
        stack.wait_config_up().await;
        let Some(gateway) = stack.config_v4().and_then(|c| c.gateway) else {
            Timer::after(Duration::from_secs(1)).await;
            continue;
        };
        let mut socket = TcpSocket::new(stack, rx, tx);
        socket.set_timeout(Some(Duration::from_secs(30)));
        if let Err(e) = socket.connect((gateway, MESH_PORT)).await {
            println!("mesh: cannot reach {gateway}:{MESH_PORT}: {e:?}");
            Timer::after(Duration::from_secs(2)).await;
            continue;
        }
        conn += 1;
        run_link(&mut node, &mut socket, ConnId(conn)).await;
        node.handle_disconnect(ConnId(conn), now());
        report_all(&mut node);
        socket.abort();
        Timer::after(Duration::from_secs(1)).await;
    }
}

fn now() -> Instant {
    Instant::from_micros(embassy_time::Instant::now().as_micros())
}

/// Runs the node over one TCP link until it breaks or the node closes it.
async fn run_link(node: &mut MeshNode, socket: &mut TcpSocket<'_>, conn: ConnId) {
    node.handle_connect(conn, now(), Direction::Station);
    let mut buf = [0u8; 1024];
    loop {
        while let Some(t) = node.poll_transmit() {
            match t {
                Transmit::Send { data, .. } => {
                    let mut rest = &data[..];
                    while !rest.is_empty() {
                        match socket.write(rest).await {
                            Ok(n) if n > 0 => rest = &rest[n..],
                            _ => return,
                        }
                    }
                }
                Transmit::Close { reason, .. } => {
                    println!("mesh: link closed by the node ({reason:?})");
                    return;
                }
            }
        }
        if report_all(node) {
            // An image is installed and the boot partition switched: restart into it.
            Timer::after(Duration::from_secs(2)).await;
            esp_hal::system::software_reset();
        }
        let wake = match node.poll_timeout() {
            Some(t) => embassy_time::Instant::from_micros(t.as_micros()),
            None => embassy_time::Instant::now() + Duration::from_secs(60),
        };
        match select(socket.read(&mut buf), Timer::at(wake)).await {
            Either::First(Ok(0) | Err(_)) => return,
            Either::First(Ok(n)) => node.handle_bytes(conn, now(), &buf[..n]),
            Either::Second(()) => node.handle_timeout(now()),
        }
    }
}

/// Prints the node's events; true once an image was installed.
fn report_all(node: &mut MeshNode) -> bool {
    let mut installed = false;
    while let Some(ev) = node.poll_event() {
        match ev {
            Event::NewConnection { node_id, .. } => println!("mesh: joined via node {node_id}"),
            Event::DroppedConnection {
                node_id, reason, ..
            } => {
                println!("mesh: link to {node_id} dropped ({reason:?})")
            }
            Event::Received { from, msg, .. } => println!(
                "mesh: from {from}: {}",
                core::str::from_utf8(&msg).unwrap_or("<not UTF-8>")
            ),
            Event::Plugin(OtaEvent::Progress { done, total, .. }) if done * 10 % total < 10 => {
                println!("ota: {done}/{total} chunks")
            }
            Event::Plugin(OtaEvent::Installed { image, .. }) => {
                println!(
                    "ota: installed sha256 {} version {:?}",
                    image.sha256, image.version
                );
                installed = true;
            }
            Event::Plugin(OtaEvent::Failed { reason, .. } | OtaEvent::Refused { reason, .. }) => {
                println!("ota: {reason}")
            }
            _ => {}
        }
    }
    installed
}

#[embassy_executor::task]
async fn wifi_task(mut controller: WifiController<'static>) {
    loop {
        match controller.connect_async().await {
            Ok(_) => {
                println!("wifi: connected to {MESH_SSID}");
                let _ = controller.wait_for_disconnect_async().await;
                println!("wifi: disconnected");
            }
            Err(e) => println!("wifi: cannot connect to {MESH_SSID}: {e:?}"),
        }
        Timer::after(Duration::from_secs(5)).await;
    }
}

#[embassy_executor::task]
async fn net_task(mut runner: Runner<'static, Interface<'static>>) {
    runner.run().await
}
