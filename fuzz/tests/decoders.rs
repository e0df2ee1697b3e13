//! The ring-buffer decoders: a record the kernel side could write decodes to what it holds; any
//! other bytes decode to nothing or to what whole records they hold, never a panic.

use phase_1_poc::event::Phase1Event;
use phase_2_straddle::event::{Phase2Call, Phase2Event, Phase2Moment, COMM_LEN};
use proptest::prelude::*;
use std::mem::size_of;

/// The bytes of a plain-old-data record, as the kernel lays them out.
fn bytes_of<T: Copy>(value: &T) -> Vec<u8> {
    // SAFETY: T is a #[repr(C)] record of integers (no padding in these layouts: build.rs
    // checks them against the C headers); reading its bytes is reading initialised memory.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

fn phase1_event() -> impl Strategy<Value = Phase1Event> {
    (
        any::<[u64; 3]>(),
        any::<[u32; 2]>(),
        any::<i32>(),
        any::<u32>(),
        any::<[u8; phase_1_poc::event::COMM_LEN]>(),
    )
        .prop_map(
            |([signature, t_ns, end], [tgid, tid], fd, dir, comm)| Phase1Event {
                signature,
                t_ns,
                end,
                tgid,
                tid,
                fd,
                dir,
                comm,
            },
        )
}

/// A call header with `n` moments after it (the header's `n` says so).
fn phase2_call(max_moments: usize) -> impl Strategy<Value = (Phase2Call, Vec<Phase2Moment>)> {
    (
        any::<[u64; 3]>(),
        any::<[u32; 2]>(),
        any::<i32>(),
        0..2u32,
        0..2u32,
        any::<[u8; COMM_LEN]>(),
        prop::collection::vec(any::<[u64; 2]>(), 0..=max_moments),
    )
        .prop_map(
            |([t_ns, flow_birth_ns, cgroup_id], [tgid, tid], fd, dir, tls, comm, moments)| {
                let call = Phase2Call {
                    t_ns,
                    flow_birth_ns,
                    cgroup_id,
                    tgid,
                    tid,
                    fd,
                    dir,
                    n: moments.len() as u32,
                    tls,
                    comm,
                };
                let moments = moments
                    .into_iter()
                    .map(|[signature, end]| Phase2Moment { signature, end })
                    .collect();
                (call, moments)
            },
        )
}

fn expected_events(calls: &[(Phase2Call, Vec<Phase2Moment>)]) -> Vec<Phase2Event> {
    calls
        .iter()
        .flat_map(|(call, moments)| {
            moments.iter().map(|m| Phase2Event {
                call: *call,
                signature: m.signature,
                end: m.end,
            })
        })
        .collect()
}

fn encode(calls: &[(Phase2Call, Vec<Phase2Moment>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (call, moments) in calls {
        out.extend(bytes_of(call));
        for m in moments {
            out.extend(bytes_of(m));
        }
    }
    out
}

proptest! {
    #[test]
    fn a_phase1_record_decodes_to_the_event_it_holds(
        event in phase1_event(),
        trailing in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let mut bytes = bytes_of(&event);
        // The ring buffer rounds records up to 8 bytes: what follows is not the event's.
        bytes.extend(trailing);
        prop_assert_eq!(Phase1Event::parse(&bytes), Some(event));
    }

    #[test]
    fn a_short_phase1_record_decodes_to_nothing(
        bytes in prop::collection::vec(any::<u8>(), 0..size_of::<Phase1Event>()),
    ) {
        prop_assert_eq!(Phase1Event::parse(&bytes), None);
    }

    #[test]
    fn a_phase2_batch_decodes_to_its_moments_in_order(
        calls in prop::collection::vec(phase2_call(8), 0..6),
    ) {
        let decoded: Vec<Phase2Event> = Phase2Call::parse(&encode(&calls)).collect();
        prop_assert_eq!(decoded, expected_events(&calls));
    }

    /// A record cut short (a torn or malformed batch) yields the moments of the calls that are
    /// whole before the cut, and nothing of the call it cuts.
    #[test]
    fn a_cut_phase2_batch_decodes_to_its_whole_calls(
        calls in prop::collection::vec(phase2_call(8), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let bytes = encode(&calls);
        let cut = cut.index(bytes.len());
        let mut whole = Vec::new();
        let mut at = 0;
        for (call, moments) in &calls {
            at += size_of::<Phase2Call>() + moments.len() * size_of::<Phase2Moment>();
            if at > cut {
                break;
            }
            whole.push((*call, moments.clone()));
        }
        let decoded: Vec<Phase2Event> = Phase2Call::parse(&bytes[..cut]).collect();
        prop_assert_eq!(decoded, expected_events(&whole));
    }

    /// Any bytes: never more moments than the bytes can hold, whatever the headers' counts say.
    #[test]
    fn any_bytes_decode_to_at_most_what_they_can_hold(
        bytes in prop::collection::vec(any::<u8>(), 0..1024),
    ) {
        let most = bytes.len().saturating_sub(size_of::<Phase2Call>()) / size_of::<Phase2Moment>();
        prop_assert!(Phase2Call::parse(&bytes).count() <= most);
    }
}
