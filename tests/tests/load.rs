//! The datapath loads (passes the verifier) at every log level: turning on
//! debug logs must never cost an operator the datapath. Log statements add
//! code the verifier walks, and inside loops they multiply.
use overlay::Datapath;

#[test]
fn datapath_loads_at_every_log_level() {
    for level in [log::LevelFilter::Off, log::LevelFilter::Info, log::LevelFilter::Debug, log::LevelFilter::Trace] {
        if let Err(error) = Datapath::load(level) {
            panic!("expected the datapath to load with log level {level}, got: {error}");
        }
    }
}

/// The needs read from the object are the real ones (a helper each
/// decapsulation calls, the ring buffer of drop events), and this kernel
/// has every one: the probe that refuses a kernel lacking one finds
/// nothing missing here (6.18, and 6.1 in the guest).
#[test]
fn the_kernel_has_every_helper_and_map_type_the_programs_need() {
    use overlay::datapath::kernel_needs::{self, KernelNeed, ProgramKind};
    let needs = kernel_needs::probed().unwrap_or_else(|error| panic!("expected the object's needs to be read and probed, got: {error}"));
    for need in &needs.needed {
        println!("{need}");
    }
    let called_by = |kind: ProgramKind, helper: &str| {
        needs.needed.iter().find_map(|need| match need {
            KernelNeed::Helper { kind: k, programs, .. } if *k == kind && need.name() == helper => Some(programs.clone()),
            _ => None,
        })
    };
    let expected = [
        (ProgramKind::Xdp, "bpf_xdp_load_bytes", overlay_common::programs::DECAP_XDP),
        (ProgramKind::Tc, "bpf_redirect_peer", overlay_common::programs::DECAP_TC),
        (ProgramKind::Tc, "bpf_skb_adjust_room", overlay_common::programs::ENDPOINT_TC),
    ];
    for (kind, helper, program) in expected {
        let programs = called_by(kind, helper);
        assert!(
            programs.as_ref().is_some_and(|p| p.iter().any(|p| p == program)),
            "expected {helper} among the {} helpers, called by {program}; found callers {programs:?} in {:#?}",
            kind.label(),
            needs.needed
        );
    }
    assert!(
        needs.needed.iter().any(|need| matches!(need, KernelNeed::MapType { .. }) && need.name() == "ringbuf"),
        "expected the ring buffer among the map types: {:#?}",
        needs.needed
    );
    assert!(needs.missing.is_empty(), "expected this kernel to have every need, it lacks: {:?}", needs.missing);
}
