//! `pmesh decode` run as a process: frames on stdin, one JSON object per frame on stdout,
//! exit status 0 only when every frame was ok.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value as J;

/// Runs `pmesh decode <args>` on `input`; returns the parsed output lines and the exit code.
fn decode(args: &[&str], input: &[u8]) -> (Vec<J>, i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pmesh"))
        .arg("decode")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pmesh");
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    let text = String::from_utf8(out.stdout).expect("stdout is UTF-8");
    for line in text.lines() {
        assert!(line.starts_with(r#"{"ok":"#), "`ok` comes first: {line}");
    }
    let lines = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    (
        lines,
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn nul_stream(frames: &[&[u8]]) -> Vec<u8> {
    let mut s = Vec::new();
    for f in frames {
        s.extend_from_slice(f);
        s.push(0);
    }
    s
}

fn wire_vectors() -> Vec<(String, String)> {
    let path = format!(
        "{}/../../testdata/vectors/wire.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let v: J = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["frame"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn every_wire_vector_one_line_each_with_the_fields_of_its_kind() {
    let vectors = wire_vectors();
    let frames: Vec<&[u8]> = vectors.iter().map(|(_, f)| f.as_bytes()).collect();
    let (out, code, _) = decode(&[], &nul_stream(&frames));
    assert_eq!(out.len(), vectors.len());
    assert_eq!(code, 1, "the malformed vector makes the run not ok");
    let mut at = 0u64;
    for ((name, frame), line) in vectors.iter().zip(&out) {
        assert_eq!(line["at"], at, "{name}");
        at += frame.len() as u64 + 1;
        if name == "malformed_msg_value" {
            assert_eq!(line["ok"], false);
            assert_eq!(line["kind"], "json");
            let error = line["error"].as_str().unwrap();
            assert!(error.contains("unexpected 'b'"), "{error}");
            let fault = line["error_at"].as_u64().unwrap() - line["at"].as_u64().unwrap();
            assert_eq!(&frame[fault as usize..fault as usize + 6], "broken");
            continue;
        }
        assert_eq!(line["ok"], true, "{name}: {line}");
        for key in ["type", "routing", "from"] {
            assert!(line.get(key).is_some(), "{name}: no {key}");
        }
        assert_eq!(
            line.get("dest").is_some(),
            frame.contains("\"dest\""),
            "{name}: dest"
        );
    }
    let by_name = |n: &str| &out[vectors.iter().position(|(name, _)| name == n).unwrap()];

    let sync = by_name("node_sync_reply_nodeid_from_from");
    assert_eq!(
        (
            &sync["routing"],
            &sync["node_id"],
            &sync["tree_size"],
            &sync["rooted"]
        ),
        (
            &J::from("neighbour"),
            &J::from(3907768579u32),
            &J::from(4),
            &J::from(true)
        )
    );
    let reply = by_name("time_sync_reply");
    assert_eq!(
        (
            &reply["time_type"],
            &reply["t0"],
            &reply["t1"],
            &reply["t2"]
        ),
        (
            &J::from(2),
            &J::from(1000000),
            &J::from(1500200),
            &J::from(1500450)
        )
    );
    let request = by_name("time_sync_request");
    assert_eq!(request["time_type"], 0);
    assert!(
        request.get("t0").is_none() && request.get("t1").is_none(),
        "absent stamps"
    );
    let start = by_name("time_delay_start");
    assert_eq!(
        (&start["routing"], &start["t0"]),
        (&J::from("single"), &J::from(1000000))
    );
    assert!(start.get("t1").is_none());

    let announce = by_name("ota_announce_flags");
    for (k, v) in [
        ("md5", J::from("0c6b3d4ea9f3e8a0c4d2b1a1e5f0d9c7")),
        ("role", J::from("sensor")),
        ("hardware", J::from("ESP32")),
        ("noPart", J::from(150)),
        ("forced", J::from(true)),
        ("broadcasted", J::from(true)),
        ("compressed", J::from(true)),
        ("routing", J::from("broadcast")),
    ] {
        assert_eq!(announce[k], v, "announce {k}");
    }
    assert!(announce.get("partNo").is_none());
    assert_eq!(by_name("ota_data_request")["partNo"], 0);
    let data = by_name("ota_data");
    assert_eq!(
        (&data["partNo"], &data["data_len"]),
        (&J::from(0), &J::from(8))
    );
    assert_eq!(by_name("ota_data_broadcast_mode")["routing"], "broadcast");

    let single = by_name("single");
    assert_eq!(
        (&single["msg"], &single["dest"]),
        (&J::from("Hello from node 1"), &J::from(2428398258u32))
    );
    assert_eq!(by_name("unknown_type_no_routing")["routing"], "none");
    assert_eq!(by_name("unknown_type_with_routing")["routing"], "broadcast");
    assert_eq!(by_name("numeric_string_type")["type"], 9);
    assert_eq!(by_name("u32_overflow_reads_zero")["dest"], 0);
    let command = by_name("alteriom_command_400");
    assert_eq!(
        (&command["package"], &command["generation"]),
        (&J::from("CommandPackage"), &J::from("current"))
    );
    assert_eq!(
        by_name("bridge_status_610")["package"],
        "BridgeStatusPackage"
    );
}

#[test]
fn all_ok_exits_zero_and_empty_input_prints_nothing() {
    let (out, code, _) = decode(
        &[],
        b"{\"type\":8,\"dest\":0,\"from\":1,\"msg\":\"a\"}\0\0\0{\"type\":4}\0",
    );
    assert_eq!((out.len(), code), (2, 0), "empty frames are skipped");
    let (out, code, _) = decode(&[], b"");
    assert_eq!((out.len(), code), (0, 0));
}

#[test]
fn goes_on_after_bad_frames_and_says_what_and_where() {
    let stream = nul_stream(&[
        b"[1,2]",
        b"{\"type\":9,\"dest\":1,",
        br#"{"from":1,"routing":1,"type":12,"md5":"m","hardware":"ESP32","role":"r","noPart":1,"dest":2,"partNo":0,"data":"AQ*D"}"#,
        b"   ",
        b"{\"type\":9,\"dest\":1,\"from\":2,\"msg\":\"fine\"}",
    ]);
    let (out, code, _) = decode(&[], &stream);
    assert_eq!(code, 1);
    assert_eq!(out.len(), 5);
    assert_eq!(
        (&out[0]["ok"], &out[0]["kind"]),
        (&J::from(false), &J::from("not_an_object"))
    );
    assert!(out[0]["error"].as_str().unwrap().contains("an array"));
    assert_eq!(out[1]["kind"], "json");
    assert!(
        out[1]["error"].as_str().unwrap().contains("ends inside"),
        "{}",
        out[1]
    );
    assert_eq!(out[2]["kind"], "base64");
    let e = out[2]["error"].as_str().unwrap();
    assert!(e.contains("'*'") && e.contains("offset 2"), "{e}");
    assert_eq!(
        (&out[2]["type"], &out[2]["partNo"]),
        (&J::from(12), &J::from(0))
    );
    assert_eq!(out[3]["kind"], "json");
    assert!(out[3]["error"].as_str().unwrap().contains("empty"));
    assert_eq!(
        (&out[4]["ok"], &out[4]["msg"]),
        (&J::from(true), &J::from("fine"))
    );
}

#[test]
fn oversized_frames_are_reported_with_their_size_and_skipped() {
    let big = format!("{{\"type\":8,\"msg\":\"{}\"}}", "x".repeat(500));
    let stream = nul_stream(&[big.as_bytes(), b"{\"type\":5,\"from\":3}"]);
    let (out, code, _) = decode(&["--max-frame", "100"], &stream);
    assert_eq!(code, 1);
    assert_eq!(out[0]["kind"], "oversized");
    let e = out[0]["error"].as_str().unwrap();
    assert!(
        e.contains(&format!("{} bytes", big.len())) && e.contains("100-byte"),
        "{e}"
    );
    assert_eq!(
        (&out[1]["ok"], &out[1]["node_id"]),
        (&J::from(true), &J::from(3))
    );
    assert_eq!(out[1]["at"], big.len() as u64 + 1);
    // Default cap: the same frame is fine.
    let (out, code, _) = decode(&[], &stream);
    assert_eq!((code, &out[0]["ok"]), (0, &J::from(true)));
}

#[test]
fn lines_mode() {
    let input = b"{\"type\":9,\"dest\":5,\"from\":1,\"msg\":\"a\"}\r\n\n   \n{\"type\":6,\"from\":2,\"subs\":[{\"nodeId\":3}]}\n{oops}\n";
    let (out, code, _) = decode(&["--lines"], input);
    assert_eq!(code, 1);
    assert_eq!(out.len(), 3, "blank lines are not frames");
    assert_eq!(out[0]["msg"], "a");
    let second = input.windows(9).position(|w| w == b"{\"type\":6").unwrap();
    assert_eq!(
        (&out[1]["tree_size"], &out[1]["at"]),
        (&J::from(2), &J::from(second))
    );
    assert_eq!(out[2]["kind"], "json");
}

#[test]
fn unterminated_last_frame_and_payload_details() {
    let inner = r#"{\"from\":12345,\"routing\":2,\"type\":200,\"temp\":23.5,\"hum\":67.2,\"press\":1013.25,\"sid\":42,\"ts\":1609459200,\"bat\":85,\"message_type\":200}"#;
    let mut stream =
        format!("{{\"type\":8,\"dest\":0,\"from\":4,\"msg\":\"{inner}\"}}\0").into_bytes();
    stream.extend_from_slice(b"{\"type\":9,\"dest\":1,\"from\":2,\"msg\":\"bad \xff bytes\"}\0");
    stream
        .extend_from_slice(b"{\"type\":7}\0{\"type\":9,\"dest\":1,\"from\":2,\"msg\":\"tail\"}\n");
    let (out, code, _) = decode(&[], &stream);
    assert_eq!(code, 0);
    assert_eq!(out.len(), 4);
    assert_eq!(
        (&out[0]["inner_type"], &out[0]["package"]),
        (&J::from(200), &J::from("SensorPackage"))
    );
    assert_eq!(out[1]["msg_hex"], "62616420ff206279746573");
    assert!(out[2]["note"].as_str().unwrap().contains("CONTROL"));
    assert_eq!(
        (&out[3]["ok"], &out[3]["unterminated"]),
        (&J::from(true), &J::from(true))
    );
    // A capture cut inside a frame says so.
    let (out, code, _) = decode(&[], b"{\"type\":9,\"dest\":1,\"from\":2,\"ms");
    assert_eq!(code, 1);
    assert!(
        out[0]["error"]
            .as_str()
            .unwrap()
            .contains("terminating NUL"),
        "{}",
        out[0]
    );
}

#[test]
fn large_capture_streams_through() {
    // 20,000 frames (about 1.3 MB) read in many chunks: offsets stay exact across reads.
    let frame = br#"{"type":9,"dest":2428398258,"from":3907768579,"msg":"Hello from node 1"}"#;
    let stream: Vec<u8> = (0..20_000)
        .flat_map(|_| frame.iter().copied().chain([0]))
        .collect();
    let (out, code, _) = decode(&[], &stream);
    assert_eq!((out.len(), code), (20_000, 0));
    assert_eq!(out[19_999]["at"], 19_999 * (frame.len() as u64 + 1));
}
