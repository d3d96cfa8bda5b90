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
use std::{collections::BTreeSet, fmt, sync::OnceLock};

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

/// One thing a program needs of the kernel.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum KernelNeed {
    /// A helper called from a program of this type.
    Helper { program_type: &'static str, helper: String, programs: Vec<String> },
    /// A map type the object creates.
    MapType { map_type: String, maps: Vec<String> },
}

impl fmt::Display for KernelNeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelNeed::Helper { program_type, helper, programs } => {
                write!(f, "helper {helper} in {program_type} programs (called by {})", programs.join(", "))
            }
            KernelNeed::MapType { map_type, maps } => write!(f, "map type {map_type} (maps {})", maps.join(", ")),
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
    PROBED.get_or_init(|| needs_of(super::EBPF_OBJECT).map(|needed| probe(needed))).as_ref().map_err(Clone::clone)
}

/// Every helper each program of `object` calls and every map type it creates.
pub fn needs_of(object: &[u8]) -> Result<Vec<KernelNeed>, String> {
    let mut obj = Object::parse(object).map_err(|e| format!("parsing the eBPF object: {e}"))?;
    // As aya links them: every section holding functions may hold callees.
    let text_sections = obj.functions.keys().map(|(section, _)| *section).collect();
    obj.relocate_calls(&text_sections).map_err(|e| format!("linking the eBPF object's calls: {}", super::with_causes(&e)))?;
    let mut helpers: std::collections::BTreeMap<(&'static str, String), BTreeSet<String>> = Default::default();
    for (name, program) in &obj.programs {
        let program_type = match program.section {
            ProgramSection::Xdp { .. } => "XDP",
            ProgramSection::SchedClassifier => "TC",
            _ => return Err(format!("program {name}: a program type the datapath does not use ({:?})", program.section)),
        };
        let Some(function) = obj.functions.get(&program.function_key()) else { continue };
        let calls = function.instructions.iter().filter(|insn| insn.code == (BPF_JMP | BPF_CALL) as u8 && insn.src_reg() == 0);
        for insn in calls {
            helpers.entry((program_type, helper_name(insn.imm))).or_default().insert(name.clone());
        }
    }
    let mut map_types: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
    for (name, map) in &obj.maps {
        map_types.entry(map_type_name(map.map_type())).or_default().insert(name.clone());
    }
    let helpers = helpers.into_iter().map(|((program_type, helper), programs)| KernelNeed::Helper {
        program_type,
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
                KernelNeed::Helper { program_type, helper, .. } => {
                    let program_type = if *program_type == "XDP" { ProgramType::Xdp } else { ProgramType::SchedClassifier };
                    match helper_id(helper) {
                        Some(id) => is_helper_supported(program_type, id).map_err(|e| format!("probing it failed: {e}")),
                        None => Err("a helper this agent's build does not know".to_owned()),
                    }
                }
                KernelNeed::MapType { map_type, .. } => match map_type_of(map_type) {
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

fn helper_id(name: &str) -> Option<bpf_func_id> {
    (0..bpf_func_id::__BPF_FUNC_MAX_ID as i32).filter_map(helper_enum).find(|helper| helper_name(*helper as i32) == name)
}

fn map_type_name(raw: u32) -> String {
    match bpf_map_type::try_from(raw) {
        Ok(map_type) => format!("{map_type:?}").trim_start_matches("BPF_MAP_TYPE_").to_lowercase(),
        Err(_) => format!("#{raw}"),
    }
}

fn map_type_of(name: &str) -> Option<MapType> {
    let raw = (0..64u32).find(|raw| map_type_name(*raw) == name)?;
    MapType::try_from(bpf_map_type::try_from(raw).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_names_and_ids_go_both_ways() {
        for (id, name) in [(189, "bpf_xdp_load_bytes"), (152, "bpf_redirect_neigh"), (155, "bpf_redirect_peer"), (1, "bpf_map_lookup_elem")] {
            assert_eq!(helper_name(id), name, "the name of helper {id}");
            assert_eq!(helper_id(name).map(|h| h as i32), Some(id), "the id of {name}");
        }
        assert_eq!(helper_name(100_000), "#100000");
        assert_eq!(map_type_of(&map_type_name(27)), Some(MapType::RingBuf), "ringbuf goes both ways");
    }

    #[test]
    fn a_missing_need_is_refused_naming_it_and_its_programs() {
        let need = KernelNeed::Helper { program_type: "XDP", helper: "bpf_xdp_load_bytes".into(), programs: vec!["overlay_decap".into()] };
        let needs = KernelNeeds { needed: vec![need.clone()], missing: vec![(need, "not in this kernel".into())] };
        let refusal = needs.refusal().expect("a refusal");
        assert!(
            refusal.contains("helper bpf_xdp_load_bytes in XDP programs (called by overlay_decap): not in this kernel"),
            "the refusal should name the helper, its program type and program: {refusal}"
        );
        assert_eq!(KernelNeeds { needed: needs.needed, missing: vec![] }.refusal(), None);
    }
}
