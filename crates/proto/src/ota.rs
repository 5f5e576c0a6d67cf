//! Classic painlessMesh OTA messages, types 10/11/12 (spec §3.4, §6).
//!
//! Text fields (`md5`, `hardware`, `role`) are decoded like the reference's `as<String>()`:
//! a non-string value becomes its JSON text and a missing one reads `"null"`. Bytes that are
//! not UTF-8 in those fields are replaced by U+FFFD (they never occur in stock frames).

use alloc::string::String;
use alloc::vec::Vec;

use crate::json::{Value, write_str, write_u64};
use crate::message::{Envelope, types};

/// What an Announce describes, carried again in every DataRequest and Data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FirmwareInfo {
    /// Lowercase hex MD5 of the exact bytes served.
    pub md5: String,
    /// `"ESP32"` or `"ESP8266"` (compared exactly).
    pub hardware: String,
    /// Node role the image is for.
    pub role: String,
    /// Install even if `md5` is the current image.
    pub forced: bool,
    /// Number of chunks.
    pub no_part: u32,
    /// Broadcast mode (fork).
    pub broadcasted: bool,
    /// The served bytes are compressed (Alteriom Phase 1 flag; pmesh: gzip).
    pub compressed: bool,
}

impl FirmwareInfo {
    fn from_envelope(env: &Envelope) -> Self {
        let text = |k| {
            let bytes = env
                .get(k)
                .map(Value::to_text)
                .unwrap_or_else(|| b"null".to_vec());
            String::from_utf8_lossy(&bytes).into_owned()
        };
        let flag = |k| env.get(k).and_then(Value::as_bool).unwrap_or(false);
        FirmwareInfo {
            md5: text("md5"),
            hardware: text("hardware"),
            role: text("role"),
            forced: flag("forced"),
            no_part: env.get("noPart").map(Value::to_u32_lenient).unwrap_or(0),
            broadcasted: flag("broadcasted"),
            compressed: flag("compressed"),
        }
    }

    /// `from,routing,type,md5,hardware,role[,forced],noPart,broadcasted[,compressed]` (no closing brace).
    fn write_head(&self, out: &mut Vec<u8>, from: u32, routing: i32, ty: i32) {
        out.extend_from_slice(b"{\"from\":");
        write_u64(out, u64::from(from));
        out.extend_from_slice(b",\"routing\":");
        write_u64(out, routing as u64);
        out.extend_from_slice(b",\"type\":");
        write_u64(out, ty as u64);
        out.extend_from_slice(b",\"md5\":");
        write_str(out, self.md5.as_bytes());
        out.extend_from_slice(b",\"hardware\":");
        write_str(out, self.hardware.as_bytes());
        out.extend_from_slice(b",\"role\":");
        write_str(out, self.role.as_bytes());
        if self.forced {
            out.extend_from_slice(b",\"forced\":true");
        }
        out.extend_from_slice(b",\"noPart\":");
        write_u64(out, u64::from(self.no_part));
        out.extend_from_slice(if self.broadcasted {
            b",\"broadcasted\":true"
        } else {
            b",\"broadcasted\":false"
        });
        if self.compressed {
            out.extend_from_slice(b",\"compressed\":true");
        }
    }
}

/// OTA Announce (type 10, routing 2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announce {
    /// The distributor.
    pub from: u32,
    /// The firmware offered.
    pub info: FirmwareInfo,
}

impl Announce {
    /// Typed decode of a type-10 frame.
    pub fn from_envelope(env: &Envelope) -> Self {
        Announce {
            from: env.from,
            info: FirmwareInfo::from_envelope(env),
        }
    }

    /// Byte-exact serialization.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(200);
        self.info
            .write_head(&mut out, self.from, 2, types::OTA_ANNOUNCE);
        out.push(b'}');
        out
    }

    /// `DataRequest::replyTo(announce, from, partNo)`.
    pub fn request(&self, from: u32, part_no: u32) -> DataRequest {
        DataRequest {
            from,
            dest: self.from,
            part_no,
            info: self.info.clone(),
        }
    }
}

/// OTA DataRequest (type 11, routing 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataRequest {
    /// The requester.
    pub from: u32,
    /// The distributor.
    pub dest: u32,
    /// 0-based chunk index.
    pub part_no: u32,
    /// The firmware.
    pub info: FirmwareInfo,
}

impl DataRequest {
    /// Typed decode of a type-11 frame.
    pub fn from_envelope(env: &Envelope) -> Self {
        DataRequest {
            from: env.from,
            dest: env.dest,
            part_no: env.get("partNo").map(Value::to_u32_lenient).unwrap_or(0),
            info: FirmwareInfo::from_envelope(env),
        }
    }

    /// Byte-exact serialization.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(220);
        self.info
            .write_head(&mut out, self.from, 1, types::OTA_DATA_REQUEST);
        write_dest_part(&mut out, self.dest, self.part_no);
        out.push(b'}');
        out
    }

    /// `Data::replyTo(request, b64, partNo)`: routing 2 when the request was broadcasted.
    pub fn reply(&self, data_base64: Vec<u8>) -> Data {
        Data {
            from: self.dest,
            dest: self.from,
            part_no: self.part_no,
            info: self.info.clone(),
            data: data_base64,
        }
    }
}

/// OTA Data (type 12; routing 1, or 2 when `broadcasted`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Data {
    /// The distributor.
    pub from: u32,
    /// The requester (the root, in broadcast mode).
    pub dest: u32,
    /// 0-based chunk index.
    pub part_no: u32,
    /// The firmware.
    pub info: FirmwareInfo,
    /// The chunk as base64 text, as carried on the wire.
    pub data: Vec<u8>,
}

impl Data {
    /// Typed decode of a type-12 frame.
    pub fn from_envelope(env: &Envelope) -> Self {
        Data {
            from: env.from,
            dest: env.dest,
            part_no: env.get("partNo").map(Value::to_u32_lenient).unwrap_or(0),
            info: FirmwareInfo::from_envelope(env),
            data: env
                .get("data")
                .map(Value::to_text)
                .unwrap_or_else(|| b"null".to_vec()),
        }
    }

    /// The routing this Data travels with.
    pub fn routing(&self) -> i32 {
        if self.info.broadcasted { 2 } else { 1 }
    }

    /// Byte-exact serialization.
    pub fn to_json(&self) -> Vec<u8> {
        self.to_json_routed(self.routing())
    }

    /// Serialization as a flood (`routing` 2) whatever `broadcasted` says: how pmesh's push
    /// broadcast answers a stock node's fallback request with `broadcasted:false`.
    pub fn to_json_flooded(&self) -> Vec<u8> {
        self.to_json_routed(2)
    }

    fn to_json_routed(&self, routing: i32) -> Vec<u8> {
        let mut out = Vec::with_capacity(240 + self.data.len());
        self.info
            .write_head(&mut out, self.from, routing, types::OTA_DATA);
        write_dest_part(&mut out, self.dest, self.part_no);
        out.extend_from_slice(b",\"data\":");
        write_str(&mut out, &self.data);
        out.push(b'}');
        out
    }

    /// The chunk's bytes (base64-decoded).
    pub fn decode_data(&self) -> Result<Vec<u8>, crate::base64::Base64Error> {
        crate::base64::decode(&self.data)
    }

    /// `DataRequest::replyTo(data, partNo)`: the request for another part, as the reference
    /// builds it. Note its `from` is this Data's `dest` — in broadcast mode that is the root,
    /// not the node asking (the reference's broken fallback, spec §6).
    pub fn next_request(&self, part_no: u32) -> DataRequest {
        DataRequest {
            from: self.dest,
            dest: self.from,
            part_no,
            info: self.info.clone(),
        }
    }
}

fn write_dest_part(out: &mut Vec<u8>, dest: u32, part_no: u32) {
    out.extend_from_slice(b",\"dest\":");
    write_u64(out, u64::from(dest));
    out.extend_from_slice(b",\"partNo\":");
    write_u64(out, u64::from(part_no));
}
