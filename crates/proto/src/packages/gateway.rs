//! Gateway packages (620/621, `src/painlessmesh/gateway.hpp`): data a node asks the gateway
//! to deliver to the Internet, and the gateway's acknowledgement. Both are single-routed.

use super::macros::package;
use super::{Header, Text, types};

package! {
    /// GatewayDataPackage (620, single; `src/painlessmesh/gateway.hpp`): data a node asks the
    /// gateway to deliver to the Internet.
    pub struct GatewayDataPackage: single {
        /// `msgId`.
        msg_id: u32 = read_as("msgId");
        /// `origin`: the node that created the message.
        origin: u32 = read_as("origin");
        /// `ts`: mesh time at creation.
        ts: u32 = read_as("ts");
        /// `prio`: 0 critical … 3 low.
        prio: u8 = read_as("prio"), new = 2;
        /// `dest_url` (read only when it is a string; default "").
        dest_url: Text = read_or("dest_url", Text::default());
        /// `payload` (read only when it is a string; default "").
        payload: Text = read_or("payload", Text::default());
        /// `content`: MIME type (read only when it is a string; default "application/json").
        content: Text = read_or("content", Text::from("application/json"));
        /// `retry`: relay attempts.
        retry: u8 = read_as("retry");
        /// `ack`: an acknowledgement is wanted.
        ack: bool = read_or("ack", false);
    }
}

impl GatewayDataPackage {
    /// A request from `from` to the gateway `dest`, normal priority, JSON content.
    pub fn new(from: u32, dest: u32) -> Self {
        Self::with_header(Header::single(types::GATEWAY_DATA, from, dest))
    }
}

package! {
    /// GatewayAckPackage (621, single): the gateway's answer to a [`GatewayDataPackage`].
    pub struct GatewayAckPackage: single {
        /// `msgId` acknowledged.
        msg_id: u32 = read_as("msgId");
        /// `origin` of the acknowledged message.
        origin: u32 = read_as("origin");
        /// `success`.
        success: bool = read_or("success", false);
        /// `http`: HTTP status (0 when not applicable).
        http: u16 = read_as("http");
        /// `err` (read only when it is a string; default "").
        err: Text = read_or("err", Text::default());
        /// `ts`: mesh time of the acknowledgement.
        ts: u32 = read_as("ts");
    }
}

impl GatewayAckPackage {
    /// An acknowledgement from the gateway `from` to `dest`.
    pub fn new(from: u32, dest: u32) -> Self {
        Self::with_header(Header::single(types::GATEWAY_ACK, from, dest))
    }
}
