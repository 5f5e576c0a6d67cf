//! The reference's time arithmetic (`ntp::clockOffset`, `ntp::tripDelay`, `ntp::adopt`),
//! reproduced exactly so a pmesh node and a stock node decide the same on the same samples.

/// `|offset|` below which a sample completes a sync (`TIME_SYNC_ACCURACY`, µs).
pub const TIME_SYNC_ACCURACY: u32 = 5_000;
/// Offsets with `4 < |x| < this` are softened to `x / 4` (`MIN_LARGE_OFFSET_STEP`, µs).
pub const MIN_LARGE_OFFSET_STEP: i32 = 500;
/// A sample whose round trip exceeds this many times the remote's processing time is
/// rejected (`MAX_CPU_TRIP_RATIO`).
pub const MAX_CPU_TRIP_RATIO: u32 = 85;

/// NTP offset from the four stamps, with the reference's /4 softening and 85x rejection,
/// all in u32/i32 wrapping arithmetic. `t3` is the adopter's receive time.
pub fn clock_offset(t0: u32, t1: u32, t2: u32, t3: u32) -> i32 {
    // The 85x test is done in u32 and wraps, as in the reference.
    if t3.wrapping_sub(t0) > t2.wrapping_sub(t1).wrapping_mul(MAX_CPU_TRIP_RATIO) {
        return 0;
    }
    let offset = (t1.wrapping_sub(t0) as i32 / 2).wrapping_add(t2.wrapping_sub(t3) as i32 / 2);
    // abs(INT32_MIN) is undefined in C++; the host build returns INT32_MIN, which is not < 500.
    let magnitude = offset.checked_abs().unwrap_or(i32::MAX);
    if magnitude > 4 && magnitude < MIN_LARGE_OFFSET_STEP {
        offset / 4
    } else {
        offset
    }
}

/// The NTP offset from the four stamps without the reference's /4 softening, or `None` when
/// the 85x round-trip check rejects the sample (used by the optional rate discipline).
pub fn raw_offset(t0: u32, t1: u32, t2: u32, t3: u32) -> Option<i32> {
    if t3.wrapping_sub(t0) > t2.wrapping_sub(t1).wrapping_mul(MAX_CPU_TRIP_RATIO) {
        return None;
    }
    Some((t1.wrapping_sub(t0) as i32 / 2).wrapping_add(t2.wrapping_sub(t3) as i32 / 2))
}

/// True when an offset completes a sync: `0 < |offset| < 5000 µs`. Zero does not (retry).
pub fn sync_complete(offset: i32) -> bool {
    offset != 0 && offset.unsigned_abs() < TIME_SYNC_ACCURACY
}

/// One-way trip delay from a TIME_DELAY exchange, computed and halved in u32 as the reference does.
pub fn trip_delay(t0: u32, t1: u32, t2: u32, t3: u32) -> u32 {
    t3.wrapping_sub(t0).wrapping_sub(t2.wrapping_sub(t1)) / 2
}

/// Whether this node adopts the neighbour's time (`ntp::adopt`): the side without time
/// authority adopts; otherwise the smaller side; on a tie the lower id.
pub fn adopt(
    my_id: u32,
    my_authority: bool,
    my_sub_count: usize,
    remote_id: u32,
    remote_authority: bool,
    remote_sub_count: usize,
) -> bool {
    if my_authority != remote_authority {
        return remote_authority;
    }
    if my_sub_count != remote_sub_count {
        return my_sub_count < remote_sub_count;
    }
    my_id < remote_id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softening_and_rejection() {
        assert_eq!(clock_offset(1_000_000, 1_000_104, 1_000_154, 1_000_250), 4);
        assert_eq!(clock_offset(1_000_000, 1_000_107, 1_000_157, 1_000_250), 1);
        assert_eq!(clock_offset(1_000_000, 1_003_000, 1_003_100, 999_990), 0);
        assert!(!sync_complete(0));
        assert!(!sync_complete(5000));
        assert!(sync_complete(-4999));
    }

    #[test]
    fn raw_offset_is_unsoftened_and_rejects_like_clock_offset() {
        // 400 µs is softened to 100 by clock_offset, not by raw_offset.
        assert_eq!(
            clock_offset(1_000_000, 1_000_450, 1_000_550, 1_000_200),
            100
        );
        assert_eq!(
            raw_offset(1_000_000, 1_000_450, 1_000_550, 1_000_200),
            Some(400)
        );
        assert_eq!(raw_offset(1_000_000, 1_003_000, 1_003_100, 999_990), None);
        // Wrapping stamps.
        assert_eq!(raw_offset(u32::MAX - 99, 900, 1_900, 1_000), Some(950));
    }
}
