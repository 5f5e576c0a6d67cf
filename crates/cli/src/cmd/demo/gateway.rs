//! [`pmesh_bridge::Gateway`] for the simulated mesh: the bridge's requests are checked at once
//! against what the gateway last saw and queued onto the simulation thread.

use std::sync::Arc;
use std::sync::mpsc::Sender;

use pmesh_bridge::gateway::check_single_dest;
use pmesh_bridge::{Gateway, GatewayError, OtaStart};

use super::app::{CampaignSpec, GATEWAY, HARDWARE, MAX_IMAGE, ROLE};
use super::runner::{Command, Shared};

/// The demo's gateway.
#[derive(Debug)]
pub struct DemoGateway {
    commands: Sender<Command>,
    shared: Arc<Shared>,
}

impl DemoGateway {
    /// A gateway queueing onto `commands`, checking against `shared`.
    pub fn new(commands: Sender<Command>, shared: Arc<Shared>) -> Self {
        DemoGateway { commands, shared }
    }

    fn queue(&self, cmd: Command) -> Result<(), GatewayError> {
        self.commands
            .send(cmd)
            .map_err(|_| GatewayError::from("the simulation has stopped"))
    }
}

impl Gateway for DemoGateway {
    fn send_single(&self, dest: u32, msg: Vec<u8>) -> Result<(), GatewayError> {
        check_single_dest(
            GATEWAY,
            dest,
            &self.shared.nodes.lock().unwrap_or_else(|e| e.into_inner()),
        )?;
        self.queue(Command::Send { dest, msg })
    }

    fn send_broadcast(&self, msg: Vec<u8>) -> Result<(), GatewayError> {
        self.queue(Command::Broadcast { msg })
    }

    fn ota_start(&self, req: OtaStart) -> Result<(), GatewayError> {
        if req.role != ROLE {
            return Err(GatewayError(format!(
                "the demo's nodes have role {ROLE:?}; no node would take role {:?}",
                req.role
            )));
        }
        if req.hardware != HARDWARE {
            return Err(GatewayError(format!(
                "the demo's nodes are {HARDWARE}; no node would take {:?}",
                req.hardware
            )));
        }
        if req.image.len() as u64 > MAX_IMAGE {
            return Err(GatewayError(format!(
                "the image is {} bytes; the demo keeps every node's flash in memory and takes at most {MAX_IMAGE}",
                req.image.len()
            )));
        }
        if let Some(c) = *self
            .shared
            .campaign
            .lock()
            .unwrap_or_else(|e| e.into_inner())
        {
            return Err(GatewayError(format!(
                "campaign {c} is still running on this gateway"
            )));
        }
        self.queue(Command::OtaStart(CampaignSpec {
            id: req.campaign,
            mode: req.mode,
            image: req.image,
            compressed: req.compressed,
            version: format!("campaign-{}", req.campaign),
        }))
    }

    fn ota_abort(&self, campaign: u64) -> Result<(), GatewayError> {
        let running = *self
            .shared
            .campaign
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if running != Some(campaign) {
            return Err(GatewayError(format!(
                "campaign {campaign} is not running on this gateway"
            )));
        }
        self.queue(Command::OtaAbort(campaign))
    }
}
