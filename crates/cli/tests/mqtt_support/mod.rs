//! Helpers for the tests of `pmesh node --mqtt`: a broker on a free port (Mosquitto, or the
//! embedded one where Mosquitto is missing and PMESH_REQUIRE_MOSQUITTO is not 1), a recording
//! MQTT subscriber, the gateway process with MQTT flags, `/metrics` scrapes.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::net_support::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};

/// Mosquitto's path; `PMESH_MOSQUITTO=/nonexistent` exercises the embedded fallback.
pub fn mosquitto() -> String {
    std::env::var("PMESH_MOSQUITTO").unwrap_or_else(|_| "/usr/sbin/mosquitto".into())
}

/// A broker on a free port: Mosquitto, or the embedded one where Mosquitto is missing.
pub struct Broker {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl Broker {
    pub fn start(dir: &TempDir) -> Broker {
        let mosquitto = mosquitto();
        let have = Path::new(&mosquitto).exists();
        if !have {
            if std::env::var("PMESH_REQUIRE_MOSQUITTO").is_ok_and(|v| v == "1") {
                panic!("PMESH_REQUIRE_MOSQUITTO=1 but {mosquitto} is not installed");
            }
            let addr = pmesh_bridge::embedded::start(0, 1 << 20).expect("embedded broker");
            eprintln!("NOTE: {mosquitto} not found: using the embedded broker (rumqttd) on {addr}");
            return Broker {
                port: addr.port(),
                child: None,
            };
        }
        let port = free_port();
        let conf = dir.file(
            "mosquitto.conf",
            &format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\n"
            ),
        );
        let broker = Broker::spawn(&mosquitto, &conf, &[port]);
        eprintln!("Mosquitto on 127.0.0.1:{port}");
        broker
    }

    /// Runs `mosquitto -c conf` and waits until it listens on every one of `ports`; `port` is
    /// the first of them. Stopped on drop, also when an assertion fails.
    pub fn spawn(mosquitto: &str, conf: &Path, ports: &[u16]) -> Broker {
        let child = Command::new(mosquitto)
            .arg("-c")
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        wait_until(Duration::from_secs(10), "mosquitto to listen", || {
            ports
                .iter()
                .all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok())
        });
        Broker {
            port: ports[0],
            child: Some(child),
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One received MQTT message.
#[derive(Clone, Debug)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

impl Msg {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or(Value::Null)
    }
}

/// A subscriber recording everything on `filter`, on its own tokio runtime.
pub struct Sub {
    pub client: AsyncClient,
    pub msgs: Arc<Mutex<Vec<Msg>>>,
    pub rt: tokio::runtime::Runtime,
}

impl Sub {
    pub fn connect(port: u16, filter: &str) -> Sub {
        Sub::connect_as(port, filter, None)
    }

    pub fn connect_as(port: u16, filter: &str, login: Option<(&str, &str)>) -> Sub {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mut o = MqttOptions::new(format!("test-sub-{}", free_port()), "127.0.0.1", port);
        o.set_max_packet_size(1 << 22, 1 << 22);
        if let Some((user, password)) = login {
            o.set_credentials(user, password);
        }
        let (client, mut el) = AsyncClient::new(o, 100);
        let msgs: Arc<Mutex<Vec<Msg>>> = Arc::default();
        let (sub_tx, sub_rx) = std::sync::mpsc::channel();
        let (m2, c2, filter) = (msgs.clone(), client.clone(), filter.to_owned());
        rt.spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = c2.subscribe(filter.clone(), QoS::AtLeastOnce).await;
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = sub_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => m2.lock().unwrap().push(Msg {
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                        retain: p.retain,
                    }),
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        sub_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the test subscriber subscribed");
        Sub { client, msgs, rt }
    }

    pub fn on(&self, topic: &str) -> Vec<Msg> {
        self.msgs
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.topic == topic)
            .cloned()
            .collect()
    }

    /// The latest message on `topic` for which `pred` holds, waiting up to `secs`.
    pub fn wait(&self, topic: &str, secs: u64, pred: impl Fn(&Msg) -> bool) -> Msg {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(m) = self.on(topic).into_iter().rev().find(|m| pred(m)) {
                return m;
            }
            if Instant::now() > deadline {
                let seen: Vec<String> = self
                    .on(topic)
                    .iter()
                    .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
                    .collect();
                panic!("nothing matching on {topic} within {secs} s; saw {seen:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Publishes with the retain flag (an empty payload clears the topic's retained message).
    pub fn publish_retained(&self, topic: &str, payload: &str) {
        let (c, t, p) = (self.client.clone(), topic.to_owned(), payload.to_owned());
        self.rt
            .block_on(async move { c.publish(t, QoS::AtLeastOnce, true, p).await })
            .unwrap();
    }

    pub fn publish(&self, topic: &str, payload: &str) {
        let (c, t, p) = (self.client.clone(), topic.to_owned(), payload.to_owned());
        self.rt
            .block_on(async move { c.publish(t, QoS::AtLeastOnce, false, p).await })
            .unwrap();
    }
}

/// `GET /metrics` (HTTP/1.0: the server closes after the answer).
pub fn scrape(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Starts the gateway with the MQTT flags (`NodeProc::start` has no extra arguments).
pub fn start_gateway(dir: &TempDir, spec: NodeSpec, extra: &[String]) -> NodeProc {
    start_gateway_env(dir, spec, extra, &[])
}

/// [`start_gateway`] with environment variables.
pub fn start_gateway_env(
    dir: &TempDir,
    spec: NodeSpec,
    extra: &[String],
    env: &[(&str, &str)],
) -> NodeProc {
    start_gateway_with(dir, spec, extra, env, None)
}

/// [`start_gateway_env`], optionally under `ulimit -n fd_limit` (soft and hard: the gateway
/// cannot raise it).
pub fn start_gateway_with(
    dir: &TempDir,
    spec: NodeSpec,
    extra: &[String],
    env: &[(&str, &str)],
    fd_limit: Option<u32>,
) -> NodeProc {
    let control = dir.0.join(format!("n{}.sock", spec.id));
    let log = dir.0.join(format!("n{}.log", spec.id));
    let mut cmd = match fd_limit {
        // `exec` keeps the pid: the process is the gateway itself.
        Some(n) => {
            let mut c = Command::new("sh");
            c.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\""), PMESH]);
            c
        }
        None => Command::new(PMESH),
    };
    cmd.arg("node")
        .args(["--id", &spec.id.to_string()])
        .args(["--listen", &format!("127.0.0.1:{}", spec.port)])
        .args(["--control", &format!("unix:{}", control.display())])
        .args(["--log", "info"])
        // These nodes run unsigned rollouts (signed ones: ota_sign.rs, pmesh-ota's tests).
        .arg("--allow-unsigned")
        .args(extra)
        .env_remove("PMESH_MQTT_PASSWORD")
        .envs(env.iter().copied());
    if spec.root {
        cmd.arg("--root");
    }
    if let Some(cfg) = &spec.config {
        cmd.arg("--config").arg(cfg);
    }
    let logfile = std::fs::File::create(&log).unwrap();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(logfile)
        .spawn()
        .expect("start pmesh node");
    let node = NodeProc {
        spec,
        control,
        log,
        child,
    };
    wait_until(
        Duration::from_secs(20),
        "the gateway's control endpoint",
        || node.try_request("ping", json!({})).is_ok(),
    );
    node
}
