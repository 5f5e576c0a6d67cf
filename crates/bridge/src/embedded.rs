//! An in-process MQTT broker (rumqttd) for `pmesh demo` and for tests on machines without
//! Mosquitto. MQTT 3.1.1 on one TCP listener; it runs on its own threads until the process ends.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Starts a broker on `127.0.0.1:port` (0 = a free port) and waits until it accepts
/// connections. Returns its address.
pub fn start(port: u16, max_payload: usize) -> anyhow::Result<SocketAddr> {
    let port = if port == 0 {
        TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()
    } else {
        port
    };
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let cfg = serde_json::json!({
        "id": 0,
        "router": {
            "max_connections": 10010,
            "max_outgoing_packet_count": 200,
            "max_segment_size": 104857600,
            "max_segment_count": 10,
        },
        "v4": {"1": {
            "name": "v4-1",
            "listen": addr.to_string(),
            "next_connection_delay_ms": 1,
            "connections": {
                "connection_timeout_ms": 60000,
                "max_payload_size": max_payload,
                "max_inflight_count": 1000,
                "dynamic_filters": true,
            },
        }},
    });
    let cfg: rumqttd::Config = serde_json::from_value(cfg)?;
    std::thread::Builder::new()
        .name(format!("rumqttd-{port}"))
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(cfg);
            if let Err(e) = broker.start() {
                tracing::error!("embedded broker on port {port} stopped: {e}");
            }
        })?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            anyhow::bail!("embedded broker did not start listening on {addr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(addr)
}
