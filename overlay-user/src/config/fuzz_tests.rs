//! Property tests of [`Config::parse`]: random and mutated TOML either
//! parses or is refused with a [`ConfigError`] that says where (a field for
//! a wrong value, a line and column for broken TOML); it never panics.
//!
//! Inputs start from the corpus in `tests/corpus/config/` (valid files and
//! the interesting edges: limits, wrong types, duplicates, odd strings,
//! broken syntax) and are mutated structurally (lines, values, keys, table
//! headers) and byte by byte, with a seeded PRNG. Bounded in the unit
//! tests; `OVERLAY_CONFIG_FUZZ_CASES` and `OVERLAY_CONFIG_FUZZ_SEED` run more.
// Outside the unit tests (feature "fuzzing") only the checks are used.
#![cfg_attr(not(test), allow(dead_code, unused_imports))]
use std::path::Path;

use super::{Config, ConfigError};

/// SplitMix64: a seeded, reproducible stream.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const DEFAULT_SEED: u64 = 0x636f_6e66_6967_0001;
const DEFAULT_CASES: usize = 5_000;

const KEYS: &[&str] = &[
    "name",
    "underlay_interface",
    "vtep_address",
    "vxlan_port",
    "ttl",
    "source_port_range",
    "flood_limit",
    "interface",
    "mac",
    "ip",
    "ipv6",
    "vni",
    "vnis",
    "endpoints",
    "peers",
    "node",
    "unknown_key",
];

const VALUES: &[&str] = &[
    "\"\"",
    "\"   \"",
    "\"host-a\"",
    "\"eth0\"",
    "\"02:00:00:00:01:01\"",
    "\"02:00:00:00:01:01:\"",
    "\"ff:ff:ff:ff:ff:ff\"",
    "\"01:00:5e:00:00:01\"",
    "\"00:00:00:00:00:00\"",
    "\"02-00-00-00-01-01\"",
    "\"192.0.2.1\"",
    "\"192.0.2.2\"",
    "\"10.10.0.1\"",
    "\"256.1.1.1\"",
    "\"0.0.0.0\"",
    "\"255.255.255.255\"",
    "\"224.0.0.1\"",
    "\"fd00::1\"",
    "\"::1\"",
    "\"ff02::1\"",
    "\"fe80::1%eth0\"",
    "\"\\u0000\"",
    "\"💥\"",
    "'literal'",
    "\"\"\"multi\nline\"\"\"",
    "0",
    "1",
    "-1",
    "100",
    "4789",
    "65535",
    "65536",
    "16777215",
    "16777216",
    "9223372036854775807",
    "-9223372036854775808",
    "0x10",
    "1e3",
    "3.5",
    "nan",
    "-inf",
    "true",
    "1979-05-27T07:32:00Z",
    "[]",
    "[1]",
    "[49152, 65535]",
    "[65535, 1]",
    "[1, 2, 3]",
    "[[1]]",
    "[\"a\"]",
    "[100, 200, 100]",
    "{}",
    "{ name = \"x\" }",
];

/// Values of the type each key expects, so that mutations reach validation.
fn typed_values(key: &str) -> &'static [&'static str] {
    const STRINGS: &[&str] = &[
        "\"\"", "\"  \"", "\"eth0\"", "\"p1\"", "\"host-a\"", "\"02:00:00:00:01:01\"", "\"02:00:00:00:02:01\"", "\"ff:ff:ff:ff:ff:ff\"",
        "\"00:00:00:00:00:00\"", "\"02:00:00:00:01\"", "\"192.0.2.1\"", "\"192.0.2.2\"", "\"10.10.0.1\"", "\"10.10.0.2\"", "\"0.0.0.0\"",
        "\"224.0.0.1\"", "\"256.0.0.1\"", "\"fd00::1\"", "\"ff02::1\"", "\"::\"", "\"fd00::1%eth0\"", "\"host a\"", "\"h/../x\"", "\"💥\"",
    ];
    const INTEGERS: &[&str] = &["0", "1", "-1", "8", "64", "96", "97", "100", "200", "255", "256", "4789", "65535", "65536", "16777215", "16777216", "-9223372036854775808"];
    const RANGES: &[&str] = &["[49152, 65535]", "[1, 1]", "[65535, 1]", "[0, 10]", "[1, 65536]", "[-1, 5]"];
    const LISTS: &[&str] = &["[]", "[100]", "[100, 200]", "[100, 100]", "[0]", "[16777216]", "[300]"];
    match key.trim() {
        "name" | "underlay_interface" | "vtep_address" | "interface" | "mac" | "ip" | "ipv6" => STRINGS,
        "vxlan_port" | "ttl" | "flood_limit" | "vni" => INTEGERS,
        "source_port_range" => RANGES,
        "vnis" => LISTS,
        _ => VALUES,
    }
}

/// The corpus files that are valid configurations.
const VALID_FILES: &[&str] = &["full.toml", "minimal.toml", "inline-tables.toml", "bom-crlf.toml"];

const HEADERS: &[&str] = &["[node]", "[[endpoints]]", "[[peers]]", "[[peers.endpoints]]", "[[vnis]]", "[peers]", "[node.x]", "[[node]]", "[x]"];

fn corpus() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/config");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("reading the corpus {}: {error}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path.file_name().unwrap().to_string_lossy().into_owned(), String::from_utf8_lossy(&bytes).into_owned())
        })
        .collect();
    files.sort();
    assert!(files.len() >= 5, "the corpus in {} has {} files", dir.display(), files.len());
    files
}

/// One structural or byte-level change to `text`.
fn mutate(rng: &mut Rng, text: &str, corpus: &[(String, String)]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let line = rng.below(lines.len() + 1);
    match rng.below(14) {
        0 if !lines.is_empty() => {
            lines.remove(line.min(lines.len() - 1));
        }
        1 if !lines.is_empty() => {
            let copy = lines[line.min(lines.len() - 1)].clone();
            lines.insert(line.min(lines.len()), copy);
        }
        2 => lines.insert(line.min(lines.len()), format!("{} = {}", rng.pick(KEYS), rng.pick(VALUES))),
        3 => lines.insert(line.min(lines.len()), rng.pick(HEADERS).to_owned()),
        4..=8 => {
            // A value replaced: the line's key kept, its value drawn (mostly of the right type).
            if let Some(at) = (0..lines.len()).map(|i| (i + line) % lines.len().max(1)).find(|&i| lines[i].contains('=')) {
                let key = lines[at].split('=').next().unwrap_or("").to_owned();
                let values = if rng.below(4) == 0 { VALUES } else { typed_values(&key) };
                lines[at] = format!("{key}= {}", rng.pick(values));
            }
        }
        9 if lines.len() > 1 => {
            let (other, last) = (rng.below(lines.len()), lines.len() - 1);
            lines.swap(line.min(last), other);
        }
        10 => {
            // Spliced with another corpus file.
            let (_, other) = &corpus[rng.below(corpus.len())];
            let other_lines: Vec<&str> = other.lines().collect();
            let from = rng.below(other_lines.len() + 1);
            lines.extend(other_lines[from.min(other_lines.len())..].iter().map(|l| l.to_string()));
        }
        _ => {
            // Bytes: a character deleted, inserted or replaced, or the text cut.
            let mut chars: Vec<char> = lines.join("\n").chars().collect();
            let at = rng.below(chars.len() + 1).min(chars.len());
            let odd = ['"', '\'', '[', ']', '{', '}', '=', '\n', '\\', '#', ',', '.', '\0', '\u{feff}', 'é', '7'];
            match rng.below(4) {
                0 if at < chars.len() => {
                    chars.remove(at);
                }
                1 => chars.insert(at, odd[rng.below(odd.len())]),
                2 if at < chars.len() => chars[at] = odd[rng.below(odd.len())],
                _ => chars.truncate(at),
            }
            return chars.into_iter().collect();
        }
    }
    lines.join("\n")
}

/// What is wrong with the outcome of parsing `text`, if anything (also the
/// `cargo fuzz` target's property, overlay-user/fuzz).
pub fn check(text: &str) -> Option<String> {
    let outcome = std::panic::catch_unwind(|| Config::parse(text, Path::new("fuzz.toml")));
    match outcome {
        Err(_) => Some("Config::parse panicked".to_owned()),
        Ok(Ok(_)) => None,
        Ok(Err(ConfigError::Invalid { problems, .. })) if problems.is_empty() => Some("refused with no problem named".to_owned()),
        Ok(Err(ConfigError::Invalid { problems, .. })) => problems
            .iter()
            .find(|p| p.path().is_empty() || p.message.is_empty())
            .map(|p| format!("a problem without a field or message: {p:?}")),
        // toml's errors say where: "TOML parse error at line L, column C".
        Ok(Err(ConfigError::Syntax { message, .. })) if message.contains("line") => None,
        Ok(Err(ConfigError::Syntax { message, .. })) => Some(format!("a syntax error that says not where: {message}")),
        Ok(Err(other)) => Some(format!("an error parse cannot give: {other}")),
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|text| {
        let text = text.trim();
        match text.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => text.parse().ok(),
        }
    })
    .unwrap_or(default)
}

#[test]
fn every_corpus_file_parses_or_names_what_is_wrong() {
    for (name, text) in corpus() {
        if let Some(problem) = check(&text) {
            panic!("corpus file {name}: {problem}\n{text}");
        }
    }
    // The valid files stay valid (so the corpus keeps exercising the whole parser).
    for (name, text) in corpus() {
        if VALID_FILES.contains(&name.as_str()) {
            if let Err(error) = Config::parse(&text, Path::new(&name)) {
                panic!("corpus file {name} should be valid: {error}");
            }
        }
    }
}

#[test]
fn mutated_configs_parse_or_name_what_is_wrong() {
    let seed = env_number("OVERLAY_CONFIG_FUZZ_SEED", DEFAULT_SEED);
    let cases = env_number("OVERLAY_CONFIG_FUZZ_CASES", DEFAULT_CASES as u64) as usize;
    let corpus = corpus();
    // Panics are caught and reported below; keep the default hook quiet.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    // Outcomes: valid, refused by validation (fields named), refused as TOML (located).
    let (mut valid, mut invalid, mut syntax, mut failures) = (0usize, 0usize, 0usize, Vec::new());
    for case in 0..cases {
        let mut rng = Rng(seed ^ (case as u64).wrapping_mul(0xd1b5_4a32_d192_ed03));
        // Mostly from a valid file, so that mutations reach validation.
        let valid_files: Vec<&(String, String)> = corpus.iter().filter(|(name, _)| VALID_FILES.contains(&name.as_str())).collect();
        let (_, start) = if rng.below(10) < 7 { valid_files[rng.below(valid_files.len())] } else { &corpus[rng.below(corpus.len())] };
        let mut text = start.clone();
        for _ in 0..1 + rng.below(4) {
            text = mutate(&mut rng, &text, &corpus);
        }
        match check(&text) {
            None => match Config::parse(&text, Path::new("fuzz.toml")) {
                Ok(_) => valid += 1,
                Err(ConfigError::Invalid { .. }) => invalid += 1,
                Err(_) => syntax += 1,
            },
            Some(problem) if failures.len() < 10 => failures.push(format!("case {case}: {problem}\n---\n{text}\n---")),
            Some(_) => {}
        }
    }
    std::panic::set_hook(hook);
    println!(
        "{cases} mutated configurations (seed {seed:#x}): {valid} valid, {invalid} refused naming fields, {syntax} refused as TOML with a line and column, {} failure(s)",
        failures.len()
    );
    assert!(failures.is_empty(), "seed {seed:#x}:\n{}", failures.join("\n\n"));
    // The mutations must not all break the syntax: some inputs get as far as validation.
    assert!(valid > 0 && invalid > 0, "{valid} valid and {invalid} refused by validation: the mutations do not reach it");
}
