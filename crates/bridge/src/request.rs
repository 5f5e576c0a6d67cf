//! What MQTT clients ask: `<prefix>/bridge/request/<verb>`, `<prefix>/command/<verb>` and the
//! legacy `painlessMesh/to/<dest>`, parsed by pure functions into typed values.
//!
//! Nothing here does IO or looks at the bridge's state: [`parse_request`] turns a verb and a
//! payload into a [`Request`] or a [`RequestError`], and the runtime acts on the result. Every
//! way an input can be refused is a [`RequestError`] variant, with the message the client reads
//! (`Display`) and a short reason for the `pmesh_bridge_requests_rejected_total{reason}`
//! counter ([`RequestError::reason`]); the transport's own refusals (too large, retained) are
//! variants too, so every rejection is counted the same way.
//!
//! Payloads are JSON objects; unknown keys are ignored and `transaction` (any JSON) is echoed.
//! A zero-byte (or blank) payload reads as `{}` for verbs that only read; verbs that act
//! (`send`, `broadcast`, `ota/start`, `ota/abort`) refuse it, because a zero-byte message is
//! also what clears a retained request, and clearing must not act.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::gateway::OtaMode;

/// Largest firmware image `ota/start` takes (from the firmware directory or inline).
pub const MAX_IMAGE_BYTES: u64 = 16 * 1024 * 1024;

/// The verbs of `bridge/request/<verb>`, as listed in errors.
pub const REQUEST_VERBS: &str = "info, health, nodes, topology, alerts, publish_now, resync, send, broadcast, ota/start, ota/status, ota/abort";

/// The verbs of `command/<verb>`, as listed in errors.
pub const COMMAND_VERBS: &str = "getNodes, getTopology, publishNow, broadcast";

/// A parsed `bridge/request/<verb>`.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// Echoed in the response (any JSON value).
    pub transaction: Option<Value>,
    /// What is asked.
    pub action: Action,
}

/// What a request asks for, one variant per verb.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// `info`: the retained `bridge/info`.
    Info,
    /// `health`: the retained `bridge/health`.
    Health,
    /// `nodes`: every node seen.
    Nodes,
    /// `topology`: the tree.
    Topology,
    /// `alerts`: the raised alerts.
    Alerts,
    /// `publish_now`: publish the status snapshot now.
    PublishNow,
    /// `resync`: republish every retained topic.
    Resync,
    /// `send`: a SINGLE message to a node.
    Send(SendRequest),
    /// `broadcast`: a BROADCAST message.
    Broadcast(BroadcastRequest),
    /// `ota/start`: start a firmware campaign.
    OtaStart(OtaStartRequest),
    /// `ota/status`: the current or last campaign.
    OtaStatus,
    /// `ota/abort`: abort the running campaign.
    OtaAbort(OtaAbortRequest),
}

/// `send`: `{"to": id, "message": "text" or JSON}`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct SendRequest {
    /// Destination node.
    pub to: NodeId,
    /// The message bytes.
    pub message: Message,
}

/// `broadcast`: `{"message": "text" or JSON}`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct BroadcastRequest {
    /// The message bytes.
    pub message: Message,
}

/// `ota/abort`: `{}` or `{"campaign": id}` (then only that campaign is aborted).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct OtaAbortRequest {
    /// The campaign that must be the running one.
    #[serde(default)]
    pub campaign: Option<u64>,
}

/// `ota/start`, checked: exactly one image source, a known hardware and mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtaStartRequest {
    /// Where the image comes from.
    pub image: ImageSource,
    /// Target role.
    pub role: String,
    /// Target hardware.
    pub hardware: Hardware,
    /// Distribution mode (default auto).
    pub mode: OtaMode,
    /// Send compressed.
    pub compressed: bool,
}

/// Where an `ota/start` image comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageSource {
    /// `image_path`: a name inside the gateway's firmware directory (already checked by
    /// [`pmesh_fwdir::check_name`]; resolved and read by the runtime).
    FirmwareDir(String),
    /// `image_base64`, decoded (not empty, at most [`MAX_IMAGE_BYTES`]).
    Inline(Vec<u8>),
}

/// Target hardware of a classic OTA offer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum Hardware {
    /// `ESP32` (the default).
    #[default]
    #[serde(rename = "ESP32")]
    Esp32,
    /// `ESP8266`.
    #[serde(rename = "ESP8266")]
    Esp8266,
}

impl Hardware {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Hardware::Esp32 => "ESP32",
            Hardware::Esp8266 => "ESP8266",
        }
    }
}

/// A node id: 1..=4294967295 (0 means "unknown" in painlessMesh).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Value")]
pub struct NodeId(pub u32);

impl TryFrom<Value> for NodeId {
    type Error = &'static str;

    fn try_from(v: Value) -> Result<Self, Self::Error> {
        v.as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .filter(|v| *v != 0)
            .map(NodeId)
            .ok_or("`to` must be a node id (1..4294967295)")
    }
}

/// A message for the mesh: a JSON string is sent as its text, a JSON object or array as its
/// JSON text.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Value")]
pub struct Message(pub Vec<u8>);

impl TryFrom<Value> for Message {
    type Error = &'static str;

    fn try_from(v: Value) -> Result<Self, Self::Error> {
        match v {
            Value::String(s) => Ok(Message(s.into_bytes())),
            v @ (Value::Object(_) | Value::Array(_)) => Ok(Message(v.to_string().into_bytes())),
            _ => Err("`message` must be a string or JSON (an object or an array)"),
        }
    }
}

/// `ota/start` as sent, before the checks that need more than one field.
#[derive(Deserialize)]
struct OtaStartFields {
    image_path: Option<String>,
    image_base64: Option<String>,
    role: String,
    #[serde(default)]
    hardware: Hardware,
    #[serde(default = "auto_mode")]
    mode: OtaMode,
    #[serde(default)]
    compressed: bool,
}

fn auto_mode() -> OtaMode {
    OtaMode::Auto
}

/// A parsed `command/<verb>` (the promised command API).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `getNodes`.
    GetNodes,
    /// `getTopology`.
    GetTopology,
    /// `publishNow`.
    PublishNow,
    /// `broadcast`: a plain-text payload is the message; a JSON object carries `message`.
    Broadcast(Vec<u8>),
}

/// Where `painlessMesh/to/<dest>` sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LegacyDest {
    /// `broadcast`.
    Broadcast,
    /// `gateway`: only `getNodes` is understood.
    Gateway,
    /// A node id.
    Node(u32),
}

/// Why a request, command or legacy message was refused. `Display` is the text the client
/// reads in the response's `error`.
#[derive(Debug)]
pub enum RequestError {
    /// `bridge/request/<verb>` with a verb the bridge does not know.
    UnknownVerb(String),
    /// `command/<verb>` with a verb the bridge does not know.
    UnknownCommand(String),
    /// The payload is not JSON.
    NotJson(serde_json::Error),
    /// The payload is JSON but not an object.
    NotAnObject,
    /// A verb that acts got a zero-byte (or blank) payload.
    EmptyPayload,
    /// The object's fields do not fit the verb (missing, wrong type, out of range).
    Invalid(serde_json::Error),
    /// A broadcast without a message.
    MissingMessage,
    /// `ota/start` with neither or both of `image_path` and `image_base64`.
    ImageSource,
    /// `image_path` refused (by its name alone, or when resolved in the firmware directory).
    ImagePath {
        /// The name as given.
        name: String,
        /// Why.
        error: pmesh_fwdir::FirmwareError,
    },
    /// `image_path` while the gateway has no firmware directory.
    NoFirmwareDir,
    /// `image_base64` is not base64.
    Base64(base64::DecodeError),
    /// The image is empty.
    EmptyImage,
    /// An inline image over [`MAX_IMAGE_BYTES`].
    ImageTooLarge {
        /// Decoded size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// `painlessMesh/to/<dest>` with a destination that is not a node id.
    NotANodeId(String),
    /// The MQTT packet is over the bridge's packet limit (it was skipped unread).
    TooLarge {
        /// Payload bytes.
        payload: usize,
        /// The whole packet's bytes.
        packet: usize,
        /// The limit (`max_packet_size`).
        limit: usize,
    },
    /// The message came retained: requests are never executed from a retained message.
    Retained {
        /// The topic, for the clearing command.
        topic: String,
    },
}

impl RequestError {
    /// The `reason` label of `pmesh_bridge_requests_rejected_total` and of `bridge/health`'s
    /// `requestsRejected`.
    pub fn reason(&self) -> &'static str {
        match self {
            RequestError::UnknownVerb(_) | RequestError::UnknownCommand(_) => "unknown_verb",
            RequestError::NotJson(_) => "invalid_json",
            RequestError::NotAnObject => "not_an_object",
            RequestError::EmptyPayload => "empty_payload",
            RequestError::Invalid(_) | RequestError::MissingMessage => "invalid_fields",
            RequestError::NotANodeId(_) => "invalid_destination",
            RequestError::ImageSource
            | RequestError::Base64(_)
            | RequestError::EmptyImage
            | RequestError::ImageTooLarge { .. } => "invalid_image",
            RequestError::ImagePath { .. } => "image_path",
            RequestError::NoFirmwareDir => "no_firmware_dir",
            RequestError::TooLarge { .. } => "too_large",
            RequestError::Retained { .. } => "retained",
        }
    }
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::UnknownVerb(v) => {
                write!(f, "unknown request {v:?}; known: {REQUEST_VERBS}")
            }
            RequestError::UnknownCommand(v) => {
                write!(f, "unknown command {v:?}; known: {COMMAND_VERBS}")
            }
            RequestError::NotJson(e) => write!(f, "invalid JSON: {e}"),
            RequestError::NotAnObject => f.write_str("request payload must be a JSON object"),
            RequestError::EmptyPayload => f.write_str(
                "empty payload: nothing done (a zero-byte message is what clears a retained request); send a JSON object, {} when there is nothing to say",
            ),
            RequestError::Invalid(e) => write!(f, "invalid request: {e}"),
            RequestError::MissingMessage => f.write_str("broadcast needs a message"),
            RequestError::ImageSource => f.write_str(
                "give exactly one of image_path (a file in the gateway's firmware directory) or image_base64",
            ),
            RequestError::ImagePath { name, error } => write!(f, "image_path {name:?}: {error}"),
            RequestError::NoFirmwareDir => f.write_str(
                "image_path is refused: the gateway has no firmware directory (pmesh node --firmware-dir DIR, or [ota] firmware_dir in pmesh.toml); use image_base64 or configure one",
            ),
            RequestError::Base64(e) => write!(f, "image_base64: {e}"),
            RequestError::EmptyImage => f.write_str("the image is empty"),
            RequestError::ImageTooLarge { size, limit } => {
                write!(f, "image of {size} bytes is over the {limit}-byte limit")
            }
            RequestError::NotANodeId(d) => write!(f, "not a node id: {d:?}"),
            RequestError::TooLarge {
                payload,
                packet,
                limit,
            } => write!(
                f,
                "request of {payload} bytes (an MQTT packet of {packet} bytes) is over this bridge's {limit}-byte packet limit ([mqtt] max_packet_size); it was not read. Firmware goes through image_path"
            ),
            RequestError::Retained { topic } => write!(
                f,
                "retained request not executed: the broker would deliver it again after every reconnect. Publish requests without the retain flag, and clear this one by publishing an empty retained message to {topic} (mosquitto_pub -r -n -t '{topic}')"
            ),
        }
    }
}

impl std::error::Error for RequestError {}

/// The payload as a JSON object (blank → empty), `transaction` taken out.
fn object(payload: &[u8]) -> Result<(Map<String, Value>, Option<Value>), RequestError> {
    if payload.trim_ascii().is_empty() {
        return Ok((Map::new(), None));
    }
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(mut m)) => {
            let t = m.remove("transaction");
            Ok((m, t))
        }
        Ok(_) => Err(RequestError::NotAnObject),
        Err(e) => Err(RequestError::NotJson(e)),
    }
}

fn fields<T: serde::de::DeserializeOwned>(m: Map<String, Value>) -> Result<T, RequestError> {
    serde_json::from_value(Value::Object(m)).map_err(RequestError::Invalid)
}

/// Parses `bridge/request/<verb>` with `payload`. Pure: the same input always gives the same
/// result, and nothing is executed. `image_path` is checked by name only here; the runtime
/// resolves it in the firmware directory.
pub fn parse_request(verb: &str, payload: &[u8]) -> Result<Request, RequestError> {
    let reads_only = match verb {
        "info" | "health" | "nodes" | "topology" | "alerts" | "publish_now" | "resync"
        | "ota/status" => true,
        "send" | "broadcast" | "ota/start" | "ota/abort" => false,
        other => return Err(RequestError::UnknownVerb(other.to_owned())),
    };
    if !reads_only && payload.trim_ascii().is_empty() {
        return Err(RequestError::EmptyPayload);
    }
    let (m, transaction) = object(payload)?;
    let action = match verb {
        "info" => Action::Info,
        "health" => Action::Health,
        "nodes" => Action::Nodes,
        "topology" => Action::Topology,
        "alerts" => Action::Alerts,
        "publish_now" => Action::PublishNow,
        "resync" => Action::Resync,
        "ota/status" => Action::OtaStatus,
        "send" => Action::Send(fields(m)?),
        "broadcast" => Action::Broadcast(fields(m)?),
        "ota/abort" => Action::OtaAbort(fields(m)?),
        _ => Action::OtaStart(ota_start(fields(m)?)?),
    };
    Ok(Request {
        transaction,
        action,
    })
}

fn ota_start(f: OtaStartFields) -> Result<OtaStartRequest, RequestError> {
    use base64::Engine as _;
    let image = match (f.image_path, f.image_base64) {
        (Some(name), None) => match pmesh_fwdir::check_name(&name) {
            Ok(_) => ImageSource::FirmwareDir(name),
            Err(error) => return Err(RequestError::ImagePath { name, error }),
        },
        (None, Some(b)) => {
            let image = base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(RequestError::Base64)?;
            if image.is_empty() {
                return Err(RequestError::EmptyImage);
            }
            if image.len() as u64 > MAX_IMAGE_BYTES {
                return Err(RequestError::ImageTooLarge {
                    size: image.len() as u64,
                    limit: MAX_IMAGE_BYTES,
                });
            }
            ImageSource::Inline(image)
        }
        _ => return Err(RequestError::ImageSource),
    };
    Ok(OtaStartRequest {
        image,
        role: f.role,
        hardware: f.hardware,
        mode: f.mode,
        compressed: f.compressed,
    })
}

/// The `transaction` of a payload, if it is a JSON object that has one (for answering a
/// request that [`parse_request`] refused).
pub fn transaction(payload: &[u8]) -> Option<Value> {
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(mut m)) => m.remove("transaction"),
        _ => None,
    }
}

/// Parses `command/<verb>`; returns the command and the payload's `transaction`. The reading
/// commands ignore a payload that is not JSON.
pub fn parse_command(verb: &str, payload: &[u8]) -> Result<(Command, Option<Value>), RequestError> {
    let command = match verb {
        "getNodes" => Command::GetNodes,
        "getTopology" => Command::GetTopology,
        "publishNow" => Command::PublishNow,
        "broadcast" => return parse_command_broadcast(payload),
        other => return Err(RequestError::UnknownCommand(other.to_owned())),
    };
    Ok((command, transaction(payload)))
}

/// `command/broadcast`: a JSON object carries `message`; anything that is not JSON is the
/// message itself.
fn parse_command_broadcast(payload: &[u8]) -> Result<(Command, Option<Value>), RequestError> {
    if payload.trim_ascii().is_empty() {
        return Err(RequestError::EmptyPayload);
    }
    match object(payload) {
        Ok((m, tx)) if m.contains_key("message") => {
            let b: BroadcastRequest = fields(m)?;
            Ok((Command::Broadcast(b.message.0), tx))
        }
        Ok(_) => Err(RequestError::MissingMessage),
        Err(RequestError::NotJson(_)) => Ok((Command::Broadcast(payload.to_vec()), None)),
        Err(e) => Err(e),
    }
}

/// Parses the `<dest>` of `painlessMesh/to/<dest>`.
pub fn parse_legacy_dest(dest: &str) -> Result<LegacyDest, RequestError> {
    match dest {
        "broadcast" => Ok(LegacyDest::Broadcast),
        "gateway" => Ok(LegacyDest::Gateway),
        id => match id.parse::<u32>() {
            Ok(id) if id != 0 => Ok(LegacyDest::Node(id)),
            _ => Err(RequestError::NotANodeId(id.to_owned())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pmesh_ota::Mode;
    use serde_json::json;

    fn err(verb: &str, payload: &str) -> RequestError {
        parse_request(verb, payload.as_bytes()).unwrap_err()
    }

    #[test]
    fn reading_verbs_take_an_empty_or_any_object_payload() {
        for verb in [
            "info",
            "health",
            "nodes",
            "topology",
            "alerts",
            "publish_now",
            "resync",
            "ota/status",
        ] {
            assert!(parse_request(verb, b"").is_ok(), "{verb}");
            assert!(parse_request(verb, b"  \n").is_ok(), "{verb}");
            let r = parse_request(verb, br#"{"transaction":[1,"a"],"extra":true}"#).unwrap();
            assert_eq!(r.transaction, Some(json!([1, "a"])));
        }
        assert_eq!(parse_request("info", b"{}").unwrap().action, Action::Info);
    }

    #[test]
    fn send_and_broadcast_are_typed() {
        let r = parse_request(
            "send",
            br#"{"to":4294967295,"message":"hi","transaction":7}"#,
        )
        .unwrap();
        assert_eq!(r.transaction, Some(json!(7)));
        assert_eq!(
            r.action,
            Action::Send(SendRequest {
                to: NodeId(u32::MAX),
                message: Message(b"hi".to_vec())
            })
        );
        let r = parse_request("broadcast", br#"{"message":{"a":[1]}}"#).unwrap();
        assert_eq!(
            r.action,
            Action::Broadcast(BroadcastRequest {
                message: Message(br#"{"a":[1]}"#.to_vec())
            })
        );
        for (payload, want) in [
            (r#"{"to":0,"message":"x"}"#, "`to` must be a node id"),
            (
                r#"{"to":4294967296,"message":"x"}"#,
                "`to` must be a node id",
            ),
            (r#"{"to":-1,"message":"x"}"#, "`to` must be a node id"),
            (r#"{"to":"2","message":"x"}"#, "`to` must be a node id"),
            (r#"{"to":1.5,"message":"x"}"#, "`to` must be a node id"),
            (r#"{"to":2}"#, "missing field `message`"),
            (
                r#"{"to":2,"message":5}"#,
                "`message` must be a string or JSON",
            ),
        ] {
            let e = err("send", payload);
            assert_eq!(e.reason(), "invalid_fields", "{payload}");
            assert!(e.to_string().contains(want), "{payload}: {e}");
        }
    }

    #[test]
    fn verbs_that_act_refuse_an_empty_payload() {
        for verb in ["send", "broadcast", "ota/start", "ota/abort"] {
            for payload in ["", " \r\n"] {
                let e = err(verb, payload);
                assert!(matches!(e, RequestError::EmptyPayload), "{verb}: {e}");
                assert!(e.to_string().contains("clears a retained request"));
            }
        }
        assert_eq!(
            parse_request("ota/abort", b"{}").unwrap().action,
            Action::OtaAbort(OtaAbortRequest { campaign: None })
        );
        assert_eq!(
            parse_request("ota/abort", br#"{"campaign":12}"#)
                .unwrap()
                .action,
            Action::OtaAbort(OtaAbortRequest { campaign: Some(12) })
        );
        assert_eq!(
            err("ota/abort", r#"{"campaign":-1}"#).reason(),
            "invalid_fields"
        );
    }

    #[test]
    fn ota_start_checks_its_image_source_and_fields() {
        let r = parse_request(
            "ota/start",
            br#"{"image_path":"esp32/fw.bin","role":"sensor","hardware":"ESP8266","mode":"pmesh","compressed":true}"#,
        )
        .unwrap();
        assert_eq!(
            r.action,
            Action::OtaStart(OtaStartRequest {
                image: ImageSource::FirmwareDir("esp32/fw.bin".into()),
                role: "sensor".into(),
                hardware: Hardware::Esp8266,
                mode: OtaMode::Fixed(Mode::Pmesh),
                compressed: true,
            })
        );
        let r = parse_request("ota/start", br#"{"image_base64":"AAE=","role":"r"}"#).unwrap();
        let Action::OtaStart(s) = r.action else {
            panic!("{r:?}")
        };
        assert_eq!(
            (s.image, s.hardware, s.mode, s.compressed),
            (
                ImageSource::Inline(vec![0, 1]),
                Hardware::Esp32,
                OtaMode::Auto,
                false
            )
        );
        for (payload, reason, want) in [
            (
                r#"{"role":"r"}"#,
                "invalid_image",
                "give exactly one of image_path",
            ),
            (
                r#"{"role":"r","image_path":"a","image_base64":"AA=="}"#,
                "invalid_image",
                "exactly one",
            ),
            (
                r#"{"role":"r","image_path":"/dev/zero"}"#,
                "image_path",
                "absolute",
            ),
            (
                r#"{"role":"r","image_path":"../../etc/shadow"}"#,
                "image_path",
                "'..' is not allowed",
            ),
            (
                r#"{"role":"r","image_base64":"!!!"}"#,
                "invalid_image",
                "image_base64",
            ),
            (
                r#"{"role":"r","image_base64":""}"#,
                "invalid_image",
                "empty",
            ),
            (
                r#"{"image_base64":"AA=="}"#,
                "invalid_fields",
                "missing field `role`",
            ),
            (
                r#"{"role":5,"image_base64":"AA=="}"#,
                "invalid_fields",
                "invalid type",
            ),
            (
                r#"{"role":"r","image_base64":"AA==","hardware":"ESP31"}"#,
                "invalid_fields",
                "unknown variant",
            ),
            (
                r#"{"role":"r","image_base64":"AA==","mode":"multicast"}"#,
                "invalid_fields",
                "unknown variant",
            ),
            (
                r#"{"role":"r","image_base64":"AA==","compressed":"yes"}"#,
                "invalid_fields",
                "invalid type",
            ),
        ] {
            let e = err("ota/start", payload);
            assert_eq!(e.reason(), reason, "{payload}: {e}");
            assert!(e.to_string().contains(want), "{payload}: {e}");
        }
    }

    #[test]
    fn unknown_verbs_and_bad_json_are_refused() {
        assert_eq!(err("nope", "{}").reason(), "unknown_verb");
        assert!(err("Info", "").to_string().contains("known: info, health"));
        assert_eq!(err("info", "{\"transaction\":").reason(), "invalid_json");
        assert_eq!(err("info", "[1,2]").reason(), "not_an_object");
        assert_eq!(err("info", "\"x\"").reason(), "not_an_object");
        assert_eq!(err("info", &"{\"a\":".repeat(200)).reason(), "invalid_json");
        assert_eq!(
            transaction(br#"{"transaction":"t","to":"x"}"#),
            Some(json!("t"))
        );
        assert_eq!(transaction(b"[1]"), None);
        assert_eq!(transaction(b"not json"), None);
    }

    #[test]
    fn commands_and_legacy_destinations() {
        assert_eq!(
            parse_command("getNodes", b"anything").unwrap(),
            (Command::GetNodes, None)
        );
        assert_eq!(
            parse_command("publishNow", br#"{"transaction":1}"#).unwrap(),
            (Command::PublishNow, Some(json!(1)))
        );
        assert_eq!(
            parse_command("broadcast", b"plain text").unwrap(),
            (Command::Broadcast(b"plain text".to_vec()), None)
        );
        assert_eq!(
            parse_command("broadcast", br#"{"message":"m","transaction":"t"}"#).unwrap(),
            (Command::Broadcast(b"m".to_vec()), Some(json!("t")))
        );
        let reason = |v: &str, p: &str| parse_command(v, p.as_bytes()).unwrap_err().reason();
        assert_eq!(reason("broadcast", "{}"), "invalid_fields");
        assert_eq!(reason("broadcast", ""), "empty_payload");
        assert_eq!(reason("broadcast", "5"), "not_an_object");
        assert_eq!(reason("reboot", ""), "unknown_verb");
        assert_eq!(parse_legacy_dest("7").unwrap(), LegacyDest::Node(7));
        assert_eq!(
            parse_legacy_dest("broadcast").unwrap(),
            LegacyDest::Broadcast
        );
        assert_eq!(parse_legacy_dest("gateway").unwrap(), LegacyDest::Gateway);
        for bad in ["0", "-1", "4294967296", "x", ""] {
            let e = parse_legacy_dest(bad).unwrap_err();
            assert_eq!(e.reason(), "invalid_destination", "{bad}");
        }
    }
}
