//! `pmesh node` and the one-shot commands at their edges: clean shutdown on SIGTERM and
//! SIGINT, clear errors for bad configuration and for a node that is not running, status
//! reports (EnhancedStatusPackage) with `[status]`.

mod net_support;

use std::process::Command;
use std::time::{Duration, Instant};

use net_support::*;

fn wait_exit(node: &mut NodeProc, within: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = node.child.try_wait().unwrap() {
            return status;
        }
        assert!(
            start.elapsed() < within,
            "node {} did not exit",
            node.spec.id
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_and_sigint_stop_cleanly() {
    let dir = TempDir::new("signals");
    let pa = free_port();
    let a = NodeProc::start(
        &dir,
        NodeSpec {
            id: 401,
            port: pa,
            connect: vec![],
            root: false,
            config: None,
        },
    );
    let mut b = NodeProc::start(
        &dir,
        NodeSpec {
            id: 402,
            port: free_port(),
            connect: vec![pa],
            root: false,
            config: None,
        },
    );
    let mut c = NodeProc::start(
        &dir,
        NodeSpec {
            id: 403,
            port: free_port(),
            connect: vec![pa],
            root: false,
            config: None,
        },
    );
    wait_until(Duration::from_secs(10), "both to join", || {
        a.nodes().len() == 2
    });

    b.signal("TERM");
    assert!(
        wait_exit(&mut b, Duration::from_secs(5)).success(),
        "exit status 0 on SIGTERM"
    );
    assert!(!b.control.exists(), "control socket removed");
    assert!(b.log_text().contains("SIGTERM"));
    c.signal("INT");
    assert!(
        wait_exit(&mut c, Duration::from_secs(5)).success(),
        "exit status 0 on SIGINT"
    );
    // The neighbour saw orderly closes, not errors.
    wait_until(Duration::from_secs(5), "the neighbour to notice", || {
        a.nodes().is_empty()
    });
    let status = a.status();
    assert_eq!(
        status["net_stats"]["closed_peer"], 2,
        "{}",
        status["net_stats"]
    );
    assert_eq!(status["net_stats"]["closed_io_error"], 0);
}

fn pmesh(args: &[&str]) -> (i32, String) {
    let out = Command::new(PMESH).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn clear_errors() {
    let dir = TempDir::new("errors");
    let typo = dir.file("typo.toml", "[node]\nlisen = \"0.0.0.0:5555\"\n");
    let (code, err) = pmesh(&["node", "--id", "5", "--config", typo.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        err.contains("invalid configuration") && err.contains("lisen"),
        "{err}"
    );

    let bad_timer = dir.file("timer.toml", "[timers]\nnode_timeout = \"10\"\n");
    let (code, err) = pmesh(&["node", "--id", "5", "--config", bad_timer.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("needs a unit"), "{err}");

    let (code, err) = pmesh(&["node", "--id", "0"]);
    assert_eq!(code, 2);
    assert!(err.contains("reserved"), "{err}");

    let sock = dir.0.join("nobody.sock");
    let (code, err) = pmesh(&["nodes", "--control", sock.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("no pmesh node answers"), "{err}");

    // A second node on a taken control socket is refused with a clear message.
    let a = NodeProc::start(
        &dir,
        NodeSpec {
            id: 411,
            port: free_port(),
            connect: vec![],
            root: false,
            config: None,
        },
    );
    let port = free_port().to_string();
    let (code, err) = pmesh(&[
        "node",
        "--id",
        "412",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--control",
        a.control.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("another pmesh node answers"), "{err}");
    // And one on a taken mesh port.
    let (code, err) = pmesh(&[
        "node",
        "--id",
        "413",
        "--listen",
        &format!("127.0.0.1:{}", a.spec.port),
        "--control",
        dir.0.join("413.sock").to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot listen"), "{err}");
}

/// A node with `[status] interval` broadcasts EnhancedStatusPackages (604) carrying what it
/// knows: its uptime, the nodes it sees, its links, its counters and free memory.
#[test]
fn status_reports_reach_the_mesh() {
    let dir = TempDir::new("status");
    let (pa, pb) = (free_port(), free_port());
    let cfg = dir.file(
        "status.toml",
        &format!("{FAST_TIMERS}\n[status]\ninterval = \"1s\"\nfirmware = \"gw-7\"\n"),
    );
    let _a = NodeProc::start(
        &dir,
        NodeSpec {
            id: 501,
            port: pa,
            connect: vec![],
            root: true,
            config: Some(cfg),
        },
    );
    let b = NodeProc::start(
        &dir,
        NodeSpec {
            id: 502,
            port: pb,
            connect: vec![pa],
            root: false,
            config: None,
        },
    );
    let mut ev = b.events();
    let until = Instant::now() + Duration::from_secs(15);
    let report = loop {
        ev.collect_for(Duration::from_millis(200));
        // A report late enough for the counters and memory to have been handed over.
        let found = ev.seen.iter().rev().find_map(|e| {
            let ok = e["kind"] == "package" && e["type"] == 604 && e["from"] == 501;
            ok.then(|| serde_json::from_str::<serde_json::Value>(e["json"].as_str()?).ok())
                .flatten()
                .filter(|j| j["msgRx"].as_u64().is_some_and(|n| n > 0))
        });
        if let Some(j) = found {
            break j;
        }
        assert!(Instant::now() < until, "no status report: {:?}", ev.seen);
    };
    assert_eq!(report["fw"], "gw-7");
    assert_eq!(report["nodes"], 2, "itself and node 502");
    assert_eq!(report["conns"], 1);
    assert!(report["mem"].as_u64().unwrap() > 0, "{report}");
    assert!(report["msgRx"].as_u64().unwrap() > 0, "{report}");
    assert!(
        report.get("latency").is_none(),
        "unknown fields are left out"
    );
}
