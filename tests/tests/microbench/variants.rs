//! Other builds of the datapath measured beside the current one, in the
//! same process and run (`OVERLAY_MICROBENCH_OBJECTS=label=path,...`): how
//! a change is measured against what it replaces when only figures from
//! one run are comparable on this machine.
//!
//! A variant's programs share the current datapath's maps (configuration
//! tables, node entry, counters) through its pins, so they see the same
//! configuration and count into the same counters; maps that are not
//! pinned (route cache, IP IDs, scratch space) are the variant's own.
use std::path::Path;

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{SchedClassifier, Xdp},
};
use overlay::pinning::PinDir;
use overlay_common::programs;

/// A variant object, loaded and its programs verified.
pub struct Variant {
    pub label: String,
    ebpf: Ebpf,
}

impl Variant {
    pub fn load(label: &str, object: &Path, pins: &PinDir, pinned_maps: &[&'static str]) -> anyhow::Result<Variant> {
        let mut loader = EbpfLoader::new();
        let level = log::LevelFilter::Info as u8;
        loader.override_global(aya_log::LEVEL, &level, false);
        for name in pinned_maps {
            loader.map_pin_path(*name, pins.map(name));
        }
        let mut ebpf = loader.load_file(object).with_context(|| format!("loading variant {label} from {}", object.display()))?;
        // All of them: a variant the verifier refuses is refused here, whole.
        for name in programs::ALL {
            let program = ebpf.program_mut(name).with_context(|| format!("variant {label} has no program {name}"))?;
            let result = match program {
                aya::programs::Program::Xdp(xdp) => xdp.load(),
                aya::programs::Program::SchedClassifier(tc) => tc.load(),
                _ => bail!("variant {label}: {name} is not an XDP or TC program"),
            };
            result.with_context(|| format!("variant {label}: loading {name}"))?;
        }
        Ok(Variant { label: label.to_owned(), ebpf })
    }

    pub fn decap(&self) -> anyhow::Result<&Xdp> {
        Ok(self.ebpf.program(programs::DECAP_XDP).context("no decap")?.try_into()?)
    }

    pub fn decap_tc(&self) -> anyhow::Result<&SchedClassifier> {
        Ok(self.ebpf.program(programs::DECAP_TC).context("no decap-tc")?.try_into()?)
    }

    pub fn encap(&self) -> anyhow::Result<&SchedClassifier> {
        Ok(self.ebpf.program(programs::ENDPOINT_TC).context("no encap")?.try_into()?)
    }
}

/// `label=path,label=path` from OVERLAY_MICROBENCH_OBJECTS.
pub fn requested() -> anyhow::Result<Vec<(String, std::path::PathBuf)>> {
    let Ok(text) = std::env::var("OVERLAY_MICROBENCH_OBJECTS") else {
        return Ok(Vec::new());
    };
    text.split(',')
        .filter(|item| !item.trim().is_empty())
        .map(|item| {
            let (label, path) = item
                .split_once('=')
                .with_context(|| format!("OVERLAY_MICROBENCH_OBJECTS: `{item}` is not label=path"))?;
            Ok((label.trim().to_owned(), path.trim().into()))
        })
        .collect()
}
