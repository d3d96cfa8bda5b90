//! What a node has attached, read the same way on every kernel (included
//! by tests/tests/churn.rs and cluster_churn.rs): from 6.6 a
//! TC program is a TCX link pinned under `<pins>/links/`; before (Debian
//! 12's 6.1) it is a netlink clsact filter, recorded under
//! `<pins>/filters/` (README, "Supported kernels"). XDP is a link on both.
use std::{collections::BTreeSet, process::Command};

use aya::programs::{SchedClassifier, tc::TcAttachType};
use overlay_lab::tc_filters;
use overlay::{
    pinning::PinDir,
    tc_legacy::{self, TcAttachKind},
};

/// The names of `pins`' attachments: its pinned links and its recorded filters.
pub fn attachments(pins: &PinDir) -> BTreeSet<String> {
    pins.pinned_links().into_iter().chain(tc_legacy::recorded(pins)).collect()
}

/// How many TC programs run on `device`'s ingress, in the calling thread's
/// network namespace: those on its TCX hook (where the kernel has one) and
/// its BPF filters on clsact.
#[allow(dead_code, reason = "churn.rs counts each port's programs; cluster_churn.rs only the records")]
pub fn ingress_programs(device: &str) -> Result<usize, String> {
    let tcx = match SchedClassifier::query_tcx(device, TcAttachType::Ingress) {
        Ok((_, programs)) => programs.len(),
        // Kernels without TCX refuse the query: only filters can be there.
        Err(_) if tc_legacy::probe(device) == TcAttachKind::Netlink => 0,
        Err(error) => return Err(format!("querying the TCX ingress of {device}: {error}")),
    };
    let filters = tc_filters::ingress_bpf_filters(Command::new("tc"), device).map_err(|error| format!("{error:#}"))?.len();
    Ok(tcx + filters)
}
