//! Unit tests of the packages: round trips, both generations, lenient reads, derived counts.

use super::*;
use crate::json::{DEFAULT_MAX_DEPTH, Number};

fn env(s: &str) -> Envelope {
    Envelope::parse(s.as_bytes(), DEFAULT_MAX_DEPTH).unwrap()
}

fn roundtrip(s: &str) -> Package {
    let p = Package::decode(&env(s)).unwrap();
    assert_eq!(String::from_utf8(p.to_json()).unwrap(), s);
    p
}

#[test]
fn sensor_and_generation() {
    let p = roundtrip(
        r#"{"from":12345,"routing":2,"type":200,"temp":23.5,"hum":67.2,"press":1013.25,"sid":42,"ts":1609459200,"bat":85,"message_type":200}"#,
    );
    let Package::Sensor(s) = &p else { panic!() };
    assert_eq!((s.temp, s.sid, s.bat), (23.5, 42, 85));
    assert_eq!(p.generation(), Generation::Head);
    let old = roundtrip(
        r#"{"from":1,"routing":2,"type":200,"temp":0,"hum":0,"press":0,"sid":0,"ts":0,"bat":0}"#,
    );
    assert_eq!(old.generation(), Generation::Phase2);
}

#[test]
fn command_generations() {
    let p = roundtrip(
        r#"{"from":12345,"dest":67890,"routing":1,"type":400,"cmd":10,"target":67890,"params":"{\"state\":true}","cid":1001,"message_type":400}"#,
    );
    assert_eq!(p.generation(), Generation::Head);
    let old = roundtrip(
        r#"{"from":1,"dest":2,"routing":1,"type":201,"cmd":3,"target":2,"params":"","cid":7}"#,
    );
    assert_eq!(old.generation(), Generation::Phase2);
    let built = CommandPackage::new(Generation::Phase2, 1, 2);
    assert_eq!(built.header.ty, 201);
    assert_eq!(
        built.to_json(),
        br#"{"from":1,"dest":2,"routing":1,"type":201,"cmd":0,"target":0,"params":"","cid":0}"#
    );
}

#[test]
fn status_head_shape_roundtrips_and_phase2_has_no_sections() {
    let mut s = StatusPackage::new(9);
    s.resp_to = 5;
    s.resp_msg = "ok".into();
    s.config.as_mut().unwrap().sensors.read_interval_ms = 30_500;
    s.config.as_mut().unwrap().mqtt_retry.backoff_multiplier = 1.5;
    let json = String::from_utf8(s.to_json()).unwrap();
    assert!(
        json.contains(r#""respTo":5,"respMsg":"ok","organization":{"#),
        "{json}"
    );
    assert!(
        json.contains(r#""read_interval_ms":30500,"read_interval_s":30,"#),
        "{json}"
    );
    assert!(
        json.ends_with(r#""backoff_multiplier":1.5},"message_type":202}"#),
        "{json}"
    );
    let back = roundtrip(&json);
    assert_eq!(back, Package::Status(s));
    let p2 = StatusPackage::phase2(9);
    let back = roundtrip(core::str::from_utf8(&p2.to_json()).unwrap());
    assert_eq!(back.generation(), Generation::Phase2);
}

#[test]
fn old_key_names_and_unknown_fields() {
    let e = env(
        r#"{"from":1,"routing":2,"type":202,"zz":[1],"display_config":{"timeout":4000,"x":1},"status":1}"#,
    );
    let Some(Package::Status(s)) = Package::decode(&e) else {
        panic!()
    };
    let c = s.config.as_ref().unwrap();
    assert_eq!(c.display.timeout_ms, 4000);
    assert_eq!(
        c.display.extra.get("x"),
        Some(&Value::Number(Number::UInt(1)))
    );
    assert_eq!(s.extra.len(), 1);
    assert!(
        String::from_utf8(s.to_json())
            .unwrap()
            .ends_with(r#","zz":[1]}"#)
    );
    // Missing text reads "null"; with-default reads ignore mistyped values.
    assert_eq!(s.fw.as_bytes(), b"null");
    let e = env(r#"{"from":1,"routing":2,"type":610,"internetConnected":1,"routerRSSI":"-4"}"#);
    let Some(Package::BridgeStatus(b)) = Package::decode(&e) else {
        panic!()
    };
    assert!(!b.internet_connected);
    assert_eq!(b.router_rssi, 0);
    assert_eq!(b.gateway_ip.as_bytes(), b"null");
    assert_eq!(b.message_type, None);
}

#[test]
fn arrays_keep_every_entry_and_counts_are_derived() {
    let mut p = MeshNodeListPackage::new(3);
    for i in 0..60 {
        p.nodes.push(MeshNodeInfo {
            node_id: i,
            rssi: -40,
            ..Default::default()
        });
    }
    let json = p.to_json();
    let back = Package::decode(&env(core::str::from_utf8(&json).unwrap())).unwrap();
    assert_eq!(back, Package::MeshNodeList(p));
    assert!(
        String::from_utf8(json)
            .unwrap()
            .contains(r#"],"nodeCount":60,"#)
    );
    let mut t = MeshTopologyPackage::new(1);
    t.connections.push(MeshConnection {
        from: 1,
        to: 2,
        quality: 0.95,
        latency: 3,
        hops: 1,
        ..Default::default()
    });
    assert!(
        String::from_utf8(t.to_json())
            .unwrap()
            .contains(r#""quality":0.95,"#)
    );
    let e = env(r#"{"from":1,"routing":2,"type":602,"alerts":[5,{"msg":"m"}]}"#);
    let Some(Package::MeshAlert(a)) = Package::decode(&e) else {
        panic!()
    };
    assert_eq!(a.alerts.len(), 2);
    assert_eq!(a.alerts[0].msg.as_bytes(), b"null");
}

#[test]
fn coordination_and_gateway_defaults() {
    let e = env(r#"{"from":1,"routing":2,"type":613,"peerBridges":[7,"8",9.5]}"#);
    let Some(Package::BridgeCoordination(c)) = Package::decode(&e) else {
        panic!()
    };
    assert_eq!((c.priority, c.peer_bridges.as_slice()), (5, &[7, 8, 9][..]));
    let e = env(r#"{"from":1,"dest":2,"routing":1,"type":620,"content":5,"payload":"p"}"#);
    let Some(Package::GatewayData(g)) = Package::decode(&e) else {
        panic!()
    };
    assert_eq!(g.content.as_bytes(), b"application/json");
    assert_eq!(g.payload.as_bytes(), b"p");
    assert_eq!(g.dest_url.as_bytes(), b"");
}

#[test]
fn double_encoded_in_msg() {
    let inner = SensorPackage::new(5).to_json();
    let m = UserMessage {
        ty: 8,
        dest: 0,
        from: 5,
        msg: inner,
    };
    let outer = m.to_json();
    let Some(crate::Message::Broadcast(got)) = Envelope::parse(&outer, DEFAULT_MAX_DEPTH)
        .map(|e| e.decode())
        .ok()
    else {
        panic!()
    };
    let p = Package::from_user_message(&got, DEFAULT_MAX_DEPTH).unwrap();
    assert_eq!(p, Package::Sensor(SensorPackage::new(5)));
    let plain = UserMessage {
        ty: 8,
        dest: 0,
        from: 5,
        msg: b"hello".to_vec(),
    };
    assert_eq!(Package::from_user_message(&plain, DEFAULT_MAX_DEPTH), None);
}

#[test]
fn generation_of_type() {
    assert_eq!(Generation::of_type(201), Some(Generation::Phase2));
    assert_eq!(Generation::of_type(203), Some(Generation::Phase2));
    assert_eq!(Generation::of_type(400), Some(Generation::Head));
    assert_eq!(Generation::of_type(604), Some(Generation::Head));
    assert_eq!(Generation::of_type(613), Some(Generation::Head));
    assert_eq!(Generation::of_type(200), None);
    assert_eq!(Generation::of_type(606), None);
}
