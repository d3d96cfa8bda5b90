//! What the programs need of the kernel, read from the compiled object
//! itself: every helper each program calls and every map type it creates.
//! Each is probed before the object is loaded (as libbpf and bpftool probe:
//! a two-instruction program calling the helper, a one-entry map of the
//! type), so that a kernel without one is refused naming what it lacks and
//! which program needs it, instead of with a verifier log; nothing is
//! loaded, pinned or attached before that judgement.
//!
//! Kernel behaviour: a helper the kernel does not know is refused at load
//! with "unknown func" / "invalid func" (kernel/bpf/verifier.c,
//! check_helper_call); one it knows but not for the program's type with
//! "program of this type cannot use helper". Helpers are read from the
//! instructions (`call` with src_reg 0, RFC 9669 section 4.3.1), after the
//! object's bpf-to-bpf calls are linked, so a subprogram's helper counts
//! for each program that calls it.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    sync::OnceLock,
};

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{is_helper_supported, is_map_supported},
};
use aya_obj::{
    Object,
    generated::{BPF_CALL, BPF_JMP, bpf_func_id, bpf_map_type},
    ProgramSection,
};

/// The program types of the datapath, as a helper's availability depends on one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProgramKind {
    Xdp,
    Tc,
}

impl ProgramKind {
    pub fn label(self) -> &'static str {
        match self {
            ProgramKind::Xdp => "XDP",
            ProgramKind::Tc => "TC",
        }
    }

    fn program_type(self) -> ProgramType {
        match self {
            ProgramKind::Xdp => ProgramType::Xdp,
            ProgramKind::Tc => ProgramType::SchedClassifier,
        }
    }
}

/// One thing a program needs of the kernel, by the kernel's numbers.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum KernelNeed {
    /// A helper (its `bpf_func_id`) called from programs of this kind.
    Helper { kind: ProgramKind, helper: i32, programs: Vec<String> },
    /// A map type (its `bpf_map_type`) the object creates.
    MapType { map_type: u32, maps: Vec<String> },
}

impl KernelNeed {
    /// The helper's or map type's name: `bpf_xdp_load_bytes`, `ringbuf`.
    pub fn name(&self) -> String {
        match self {
            KernelNeed::Helper { helper, .. } => helper_name(*helper),
            KernelNeed::MapType { map_type, .. } => map_type_name(*map_type),
        }
    }
}

impl fmt::Display for KernelNeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.name();
        match self {
            KernelNeed::Helper { kind, programs, .. } => {
                write!(f, "helper {name} in {} programs (called by {})", kind.label(), programs.join(", "))
            }
            KernelNeed::MapType { maps, .. } => write!(f, "map type {name} (maps {})", maps.join(", ")),
        }
    }
}

/// What the probes found.
#[derive(Clone, Debug, Default)]
pub struct KernelNeeds {
    /// Everything the object needs.
    pub needed: Vec<KernelNeed>,
    /// Of those, what this kernel lacks, or what could not be probed (with why).
    pub missing: Vec<(KernelNeed, String)>,
}

impl KernelNeeds {
    /// The refusal a kernel that lacks something gets, naming each thing.
    pub fn refusal(&self) -> Option<String> {
        (!self.missing.is_empty()).then(|| {
            let missing: Vec<String> = self.missing.iter().map(|(need, why)| format!("{need}: {why}")).collect();
            format!(
                "this kernel lacks what the datapath needs: {}; the datapath is tested on Linux 6.1 and newer (README: Supported kernels)",
                missing.join("; ")
            )
        })
    }
}

/// The needs of [`super::EBPF_OBJECT`] probed on this kernel, once per process.
pub fn probed() -> Result<&'static KernelNeeds, String> {
    static PROBED: OnceLock<Result<KernelNeeds, String>> = OnceLock::new();
    PROBED.get_or_init(|| needs_of(super::EBPF_OBJECT).map(probe)).as_ref().map_err(Clone::clone)
}

/// Every helper each program of `object` calls and every map type it creates.
pub fn needs_of(object: &[u8]) -> Result<Vec<KernelNeed>, String> {
    let mut obj = Object::parse(object).map_err(|e| format!("parsing the eBPF object: {e}"))?;
    // As aya links them: every section holding functions may hold callees.
    let text_sections = obj.functions.keys().map(|(section, _)| *section).collect();
    obj.relocate_calls(&text_sections).map_err(|e| format!("linking the eBPF object's calls: {}", super::with_causes(&e)))?;
    let mut helpers: BTreeMap<(ProgramKind, i32), BTreeSet<String>> = Default::default();
    for (name, program) in &obj.programs {
        let kind = match program.section {
            ProgramSection::Xdp { .. } => ProgramKind::Xdp,
            ProgramSection::SchedClassifier => ProgramKind::Tc,
            _ => return Err(format!("program {name}: a program type the datapath does not use ({:?})", program.section)),
        };
        let Some(function) = obj.functions.get(&program.function_key()) else { continue };
        let calls = function.instructions.iter().filter(|insn| insn.code == (BPF_JMP | BPF_CALL) as u8 && insn.src_reg() == 0);
        for insn in calls {
            helpers.entry((kind, insn.imm)).or_default().insert(name.clone());
        }
    }
    let mut map_types: BTreeMap<u32, BTreeSet<String>> = Default::default();
    for (name, map) in &obj.maps {
        map_types.entry(map.map_type()).or_default().insert(name.clone());
    }
    let helpers = helpers.into_iter().map(|((kind, helper), programs)| KernelNeed::Helper {
        kind,
        helper,
        programs: programs.into_iter().collect(),
    });
    let maps = map_types.into_iter().map(|(map_type, maps)| KernelNeed::MapType { map_type, maps: maps.into_iter().collect() });
    Ok(helpers.chain(maps).collect())
}

/// Probes each of `needed` on this kernel.
pub fn probe(needed: Vec<KernelNeed>) -> KernelNeeds {
    let missing = needed
        .iter()
        .filter_map(|need| {
            let found = match need {
                KernelNeed::Helper { kind, helper, .. } => match helper_enum(*helper) {
                    Some(id) => is_helper_supported(kind.program_type(), id).map_err(|e| format!("probing it failed: {e}")),
                    None => Err("a helper this agent's build does not know".to_owned()),
                },
                KernelNeed::MapType { map_type, .. } => match bpf_map_type::try_from(*map_type).ok().and_then(|t| MapType::try_from(t).ok()) {
                    Some(map_type) => is_map_supported(map_type).map_err(|e| format!("probing it failed: {e}")),
                    None => Err("a map type this agent's build does not know".to_owned()),
                },
            };
            match found {
                Ok(true) => None,
                Ok(false) => Some((need.clone(), "not in this kernel".to_owned())),
                Err(why) => Some((need.clone(), why)),
            }
        })
        .collect();
    KernelNeeds { needed, missing }
}

/// `bpf_func_id` is a `#[repr(u32)]` enum holding every value from 0 to
/// `__BPF_FUNC_MAX_ID` (the kernel numbers helpers in one run).
fn helper_enum(id: i32) -> Option<bpf_func_id> {
    let id = u32::try_from(id).ok().filter(|id| *id < bpf_func_id::__BPF_FUNC_MAX_ID as u32)?;
    // SAFETY: `id` is below __BPF_FUNC_MAX_ID, and every value below it is a variant.
    Some(unsafe { std::mem::transmute::<u32, bpf_func_id>(id) })
}

fn helper_name(id: i32) -> String {
    match helper_enum(id) {
        Some(helper) => format!("{helper:?}").replacen("BPF_FUNC_", "bpf_", 1),
        None => format!("#{id}"),
    }
}

fn map_type_name(raw: u32) -> String {
    match bpf_map_type::try_from(raw) {
        Ok(map_type) => format!("{map_type:?}").trim_start_matches("BPF_MAP_TYPE_").to_lowercase(),
        Err(_) => format!("#{raw}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_and_map_types_are_named_by_the_kernel_s_names() {
        for (id, name) in [(189, "bpf_xdp_load_bytes"), (152, "bpf_redirect_neigh"), (155, "bpf_redirect_peer"), (1, "bpf_map_lookup_elem")] {
            assert_eq!(helper_name(id), name, "the name of helper {id}");
            assert_eq!(helper_enum(id).map(|h| h as i32), Some(id), "the helper of id {id}");
        }
        assert_eq!(helper_name(100_000), "#100000");
        assert_eq!(map_type_name(27), "ringbuf");
    }

    #[test]
    fn a_missing_need_is_refused_naming_it_and_its_programs() {
        let need = KernelNeed::Helper { kind: ProgramKind::Xdp, helper: 189, programs: vec!["overlay_decap".into()] };
        let needs = KernelNeeds { needed: vec![need.clone()], missing: vec![(need, "not in this kernel".into())] };
        let refusal = needs.refusal().expect("a refusal");
        assert!(
            refusal.contains("helper bpf_xdp_load_bytes in XDP programs (called by overlay_decap): not in this kernel"),
            "the refusal should name the helper, its program type and program: {refusal}"
        );
        assert_eq!(KernelNeeds { needed: needs.needed, missing: vec![] }.refusal(), None);
    }
}
