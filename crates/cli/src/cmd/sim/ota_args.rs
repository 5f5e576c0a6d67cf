//! `pmesh sim`'s `--ota*` flags (clap), turned into pmesh-sim's plain [`OtaOverrides`]: clap
//! stays in the CLI.

use pmesh_sim::ota::{ApplyMode, OtaMode, OtaOverrides, Receivers};

/// The `--ota*` flags of `pmesh sim` (flatten into its arguments). They override the scenario
/// file's `[ota]` table; `--ota MODE` alone enables OTA with every default.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct OtaArgs {
    /// Run an OTA rollout: unicast, broadcast (classic painlessMesh OTA) or pmesh.
    #[arg(long = "ota", value_enum, value_name = "MODE")]
    pub mode: Option<ModeArg>,
    /// Image: a file, or `self` for the running pmesh executable (default: synthetic firmware).
    #[arg(long = "ota-image", value_name = "FILE")]
    pub image: Option<String>,
    /// Image size (synthetic), or how much of the file to use, e.g. 1MiB, 256KiB.
    #[arg(long = "ota-image-bytes", value_name = "SIZE")]
    pub image_bytes: Option<String>,
    /// Send the image uncompressed.
    #[arg(long = "ota-uncompressed")]
    pub uncompressed: bool,
    /// Install even where the image is current.
    #[arg(long = "ota-forced")]
    pub forced: bool,
    /// Bytes per chunk (classic default 1024, pmesh 4096).
    #[arg(long = "ota-chunk-bytes", value_name = "BYTES")]
    pub chunk_bytes: Option<u32>,
    /// Node that offers the image (default 1).
    #[arg(long = "ota-distributor", value_name = "ID")]
    pub distributor: Option<u32>,
    /// When to offer: `formed` (default) or a time such as 30s.
    #[arg(long = "ota-offer-at", value_name = "TIME")]
    pub offer_at: Option<String>,
    /// With --ota-offer-at formed: give up if the mesh has not formed by then (default 15m).
    #[arg(long = "ota-form-timeout", value_name = "TIME")]
    pub form_timeout: Option<String>,
    /// Receiver logic: pmesh, stock (painlessMesh's, bugs included) or mixed.
    #[arg(long = "ota-receivers", value_enum)]
    pub receivers: Option<ReceiversArg>,
    /// With mixed receivers: the share of stock nodes (default 0.5).
    #[arg(long = "ota-stock-share", value_name = "SHARE")]
    pub stock_share: Option<f64>,
    /// pmesh mode: when targets apply (default on-verify).
    #[arg(long = "ota-apply", value_enum)]
    pub apply: Option<ApplyArg>,
    /// Share of the targets that crash mid-transfer, e.g. 0.05.
    #[arg(long = "ota-crash-share", value_name = "SHARE")]
    pub crash_share: Option<f64>,
    /// Crashes happen in this window after the offer: MIN,MAX (e.g. 5s,20s).
    #[arg(long = "ota-crash-window", value_name = "MIN,MAX")]
    pub crash_window: Option<String>,
    /// A crashed node boots again after this (default 2s).
    #[arg(long = "ota-down-for", value_name = "TIME")]
    pub down_for: Option<String>,
    /// Stop when no target progressed for this long (default 10m).
    #[arg(long = "ota-give-up-after", value_name = "TIME")]
    pub give_up_after: Option<String>,
    /// pmesh mode: cap OTA bytes per second per link, e.g. 50KiB.
    #[arg(long = "ota-rate-limit", value_name = "SIZE")]
    pub rate_limit: Option<String>,
}

impl OtaArgs {
    /// The flags as pmesh-sim's typed overrides of a scenario's `[ota]` table.
    pub fn overrides(&self) -> OtaOverrides {
        OtaOverrides {
            mode: self.mode.map(Into::into),
            image: self.image.clone(),
            image_bytes: self.image_bytes.clone(),
            uncompressed: self.uncompressed,
            forced: self.forced,
            chunk_bytes: self.chunk_bytes,
            distributor: self.distributor,
            offer_at: self.offer_at.clone(),
            form_timeout: self.form_timeout.clone(),
            receivers: self.receivers.map(Into::into),
            stock_share: self.stock_share,
            apply: self.apply.map(Into::into),
            crash_share: self.crash_share,
            crash_window: self.crash_window.clone(),
            down_for: self.down_for.clone(),
            give_up_after: self.give_up_after.clone(),
            rate_limit: self.rate_limit.clone(),
        }
    }
}

/// `--ota MODE`: how the image travels ([`OtaMode`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// painlessMesh OTA: every receiver pulls every chunk from the distributor.
    Unicast,
    /// painlessMesh OTA in broadcast mode: one node requests, every Data is flooded.
    Broadcast,
    /// painlessMesh OTA in broadcast mode driven by the distributor: it floods Data 0…n−1 in
    /// order, paced, unasked (stock receivers take it; `push_rate`).
    Push,
    /// pmesh's own protocol: pipelined push along the tree.
    Pmesh,
}

impl From<ModeArg> for OtaMode {
    fn from(m: ModeArg) -> OtaMode {
        match m {
            ModeArg::Unicast => OtaMode::Unicast,
            ModeArg::Broadcast => OtaMode::Broadcast,
            ModeArg::Push => OtaMode::Push,
            ModeArg::Pmesh => OtaMode::Pmesh,
        }
    }
}

/// `--ota-receivers`: which receiver logic the nodes run ([`Receivers`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReceiversArg {
    /// pmesh nodes: pmesh's classic receiver and the pmesh protocol.
    Pmesh,
    /// Stock painlessMesh behaviour, bugs included (classic OTA only; they relay pmesh frames
    /// as any stock node does but cannot install a pmesh rollout).
    Stock,
    /// `stock_share` of the nodes (or the `stock_nodes`) stock, the others pmesh.
    Mixed,
}

impl From<ReceiversArg> for Receivers {
    fn from(r: ReceiversArg) -> Receivers {
        match r {
            ReceiversArg::Pmesh => Receivers::Pmesh,
            ReceiversArg::Stock => Receivers::Stock,
            ReceiversArg::Mixed => Receivers::Mixed,
        }
    }
}

/// `--ota-apply`: when pmesh-protocol targets apply a verified image ([`ApplyMode`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ApplyArg {
    /// Each target applies as soon as it verified the image.
    OnVerify,
    /// The distributor schedules one apply time once every target verified.
    AllVerified,
}

impl From<ApplyArg> for ApplyMode {
    fn from(a: ApplyArg) -> ApplyMode {
        match a {
            ApplyArg::OnVerify => ApplyMode::OnVerify,
            ApplyArg::AllVerified => ApplyMode::AllVerified,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use pmesh_sim::ota::{ByteSize, OfferAt, OtaScenario};
    use pmesh_sim::scenario::Dur;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        ota: OtaArgs,
    }

    fn args(line: &[&str]) -> OtaArgs {
        Cli::try_parse_from(std::iter::once("pmesh-sim").chain(line.iter().copied()))
            .unwrap()
            .ota
    }

    #[test]
    fn flags_override_the_table() {
        assert_eq!(args(&[]).overrides().apply(None).unwrap(), None);
        let o = args(&["--ota", "unicast"])
            .overrides()
            .apply(None)
            .unwrap()
            .unwrap();
        assert_eq!(
            o,
            OtaScenario {
                mode: OtaMode::Unicast,
                ..OtaScenario::default()
            }
        );
        let base = OtaScenario {
            mode: OtaMode::Broadcast,
            image_bytes: Some(ByteSize(1000)),
            ..OtaScenario::default()
        };
        let o = args(&[
            "--ota-image-bytes",
            "64KiB",
            "--ota-uncompressed",
            "--ota-receivers",
            "stock",
            "--ota-crash-share",
            "0.05",
            "--ota-crash-window",
            "1s,5s",
            "--ota-offer-at",
            "45s",
            "--ota-apply",
            "all-verified",
            "--ota-rate-limit",
            "20KiB",
        ])
        .overrides()
        .apply(Some(base))
        .unwrap()
        .unwrap();
        assert_eq!(o.mode, OtaMode::Broadcast, "kept from the table");
        assert_eq!(o.image_bytes, Some(ByteSize(64 << 10)));
        assert!(!o.compressed);
        assert_eq!(o.receivers, Receivers::Stock);
        assert_eq!(o.crash_share, 0.05);
        assert_eq!(o.crash_window, [Dur::secs(1), Dur::secs(5)]);
        assert_eq!(o.offer_at, OfferAt::At(Dur::secs(45)));
        assert_eq!(o.apply, ApplyMode::AllVerified);
        assert_eq!(o.rate_limit, Some(ByteSize(20 << 10)));
        let e = args(&["--ota-forced"]).overrides().apply(None).unwrap_err();
        assert!(e.contains("--ota MODE"), "{e}");
        let e = args(&["--ota", "pmesh", "--ota-crash-window", "5s"])
            .overrides()
            .apply(None)
            .unwrap_err();
        assert!(e.contains("MIN,MAX"), "{e}");
        assert!(
            Cli::try_parse_from(["x", "--ota", "multicast"]).is_err(),
            "unknown modes are rejected by clap"
        );
    }

    #[test]
    fn every_mode_maps_to_its_namesake() {
        use clap::ValueEnum;
        for m in ModeArg::value_variants() {
            let name = m.to_possible_value().unwrap().get_name().to_owned();
            assert_eq!(OtaMode::from(*m).name(), name);
        }
        for r in ReceiversArg::value_variants() {
            let name = r.to_possible_value().unwrap().get_name().to_owned();
            assert_eq!(Receivers::from(*r).name(), name);
        }
    }
}
