//! Reading the BPF filters on a device's clsact ingress hook, one rule for
//! every test that looks at them: the netlink filters the agent attaches
//! where the kernel has no TCX links (6.1), and the TC decapsulation beside
//! an offloaded XDP program.
use std::process::Command;

use anyhow::{Context, bail};

/// The BPF filters in the output of `tc filter show`, one line each. Each
/// priority also prints a header line without a handle; only the lines
/// with a handle are filters (`filter protocol all pref 49152 bpf chain 0
/// handle 0x1 overlay_decap direct-action not_in_hw id 42 ...`).
pub fn bpf_filter_lines(shown: &str) -> Vec<String> {
    shown.lines().filter(|line| line.contains(" bpf ") && line.contains(" handle ")).map(str::to_owned).collect()
}

/// The program id in a filter line (`... id 42 ...`).
pub fn program_id(line: &str) -> Option<u64> {
    let mut words = line.split_whitespace();
    words.by_ref().find(|word| *word == "id");
    words.next().and_then(|id| id.parse().ok())
}

/// The BPF filters on `device`'s ingress hook, read with the command `tc`
/// (`Command::new("tc")` in the calling thread's namespace, or
/// [`crate::netns::Netns::command`]`("tc")` in another).
pub fn ingress_bpf_filters(mut tc: Command, device: &str) -> anyhow::Result<Vec<String>> {
    let output = tc.args(["filter", "show", "dev", device, "ingress"]).output().context("running tc filter show")?;
    if !output.status.success() {
        bail!("tc filter show dev {device} ingress: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(bpf_filter_lines(&String::from_utf8_lossy(&output.stdout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_filter_lines_with_a_handle_are_read_with_their_program_id() {
        let shown = "filter protocol all pref 49152 bpf chain 0 \n\
                     filter protocol all pref 49152 bpf chain 0 handle 0x1 overlay_decap direct-action not_in_hw id 42 tag 0123 jited \n\
                     filter protocol all pref 1 u32 chain 0 handle 800: ht divisor 1 \n";
        let lines = bpf_filter_lines(shown);
        assert_eq!(lines.len(), 1, "expected the one BPF filter line, saw {lines:?}");
        assert_eq!(program_id(&lines[0]), Some(42), "expected program id 42 in {:?}", lines[0]);
        assert_eq!(program_id("filter protocol all pref 1 bpf chain 0 handle 0x1"), None);
    }
}
