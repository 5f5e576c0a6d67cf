//! Staged campaigns (issue 15) against the simulator: the real node and OTA plugin per node,
//! the gateway offering wave by wave, crash loops and reverts modelled in the driver
//! (`pmesh_sim::ota::campaign`). 200 nodes here; `pmesh bench campaign` runs 1,000.

use pmesh_sim::ota::campaign::{CampaignSetup, run_campaign};

#[test]
fn a_crash_looping_image_halts_in_the_first_wave_and_every_node_that_ran_it_reverts() {
    let setup = CampaignSetup::issue(200, true);
    let o = run_campaign(&setup).unwrap();
    println!("{o:#?}");
    assert_eq!(o.outcome, "halted");
    let (wave, failures, allowed) = o.halted.unwrap();
    assert_eq!(wave, 0, "halts in its first wave");
    assert!(failures > allowed);
    let first = o.waves[0].nodes;
    assert_eq!(first, 10, "5 % of 200");
    assert!(
        !o.waves[1].started && !o.waves[2].started,
        "no later wave started"
    );
    assert!(o.ran_new > 0 && o.ran_new <= first);
    assert_eq!(o.ran_new_outside_first_wave, 0);
    assert!(o.crash_looped > 0);
    assert_eq!(o.waves[0].confirmed, 0, "nothing confirmed before the halt");
    // Every node that booted the image was told to revert and runs the old one again.
    assert_eq!(o.told_to_revert, o.ran_new);
    assert_eq!(o.back_on_old, o.told_to_revert);
    assert_eq!(o.unconfirmed_on_new, 0);
    assert_eq!(o.offers, 1);
    assert_eq!(o.offers_refused, 0);
}

#[test]
fn a_good_image_finishes_every_wave() {
    let setup = CampaignSetup::issue(200, false);
    let o = run_campaign(&setup).unwrap();
    println!("{o:#?}");
    assert_eq!(o.outcome, "finished");
    assert!(o.waves.iter().all(|w| w.started));
    let confirmed: u32 = o.waves.iter().map(|w| w.confirmed).sum();
    let failed: u32 = o.waves.iter().map(|w| w.failed).sum();
    assert_eq!(confirmed + failed, 200);
    assert!(confirmed >= 190, "{confirmed} confirmed");
    assert_eq!(o.offers, 3);
    assert_eq!(o.unconfirmed_on_new, 0);
}
