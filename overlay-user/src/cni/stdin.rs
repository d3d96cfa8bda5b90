//! The network configuration on stdin, decoded before rscni decodes it so
//! that a value of the wrong type is refused naming its key.
//!
//! rscni's `Plugin::run` reads stdin itself and answers a configuration
//! that does not decode with serde's sentence ("invalid type: sequence,
//! expected struct Ipam at line 1 column 51"), which names no key; it has
//! no entry that takes the bytes (its seam for them is private). So
//! [`super::run`] reads stdin first, decodes it here through
//! `serde_path_to_error` as the type rscni decodes (`Option<NetConf>`), and
//! puts bytes back on fd 0 for rscni: the same bytes when they decode, else
//! a minimal configuration, and the plugin's commands answer with the error
//! decoded here. rscni's checks of the variables thus still come first, in
//! its order, and its error JSON, exit status and version handling stay
//! its own.
use std::{
    io::{Read as _, Seek as _, Write as _},
    os::fd::OwnedFd,
};

use rscni_plugin::{
    error::Error,
    types::{Cmd, NetConf},
    version::SpecVersion,
};

use super::conf::PLUGIN_TYPE;

/// Why stdin does not decode as a network configuration, naming the key
/// path of the value that does not (`ipam: invalid type: sequence, expected
/// struct Ipam at line 1 column 51`, `cniVersion: invalid version format:
/// 192.0.2.1`); `None` when it decodes, or when it is not UTF-8 (rscni
/// refuses that itself, as an I/O failure, code 5).
///
/// Code 6 (the spec's "failed to decode content", e.g. "failed to unmarshal
/// network config from bytes"), not 7: the bytes do not unmarshal into the
/// configuration's type, which is also what the reference plugins' skel
/// answers for a `cniVersion` that is not a string; 7 is for a
/// configuration that decodes and fails the plugin's checks (`mtu: 20`).
/// It is also the code rscni gave these inputs, so runtimes see no change
/// but the message.
pub fn decode_problem(stdin: &[u8]) -> Option<Error> {
    let text = std::str::from_utf8(stdin).ok()?;
    let mut decoder = serde_json::Deserializer::from_str(text);
    let error = match serde_path_to_error::deserialize::<_, Option<NetConf>>(&mut decoder) {
        // rscni reads with `serde_json::from_str`, which also refuses trailing bytes.
        Ok(conf) => match decoder.end() {
            Err(error) => (".".to_owned(), error),
            Ok(()) => return conf.and_then(|conf| version_problem(&conf)),
        },
        Err(error) => (error.path().to_string(), error.into_inner()),
    };
    Some(Error::FailedToDecode(match error {
        // The root: serde's sentence names the key itself (missing field `type`).
        (path, error) if path == "." || path == "?" => format!("the network configuration: {error}"),
        (path, error) => format!("{path}: {error}"),
    }))
}

/// A `cniVersion` that is not a version, which rscni decodes next (code 6,
/// "invalid version format: 192.0.2.1", the value without the key), after
/// its check of the name (code 7), which is left to it to keep its order.
fn version_problem(conf: &NetConf) -> Option<Error> {
    conf.validate_name().ok()?;
    match conf.version() {
        Err(Error::FailedToDecode(details)) => Some(Error::FailedToDecode(format!("cniVersion: {details}"))),
        _ => None,
    }
}

/// What rscni is given on stdin in place of a configuration that does not
/// decode: one that passes its own checks for every command (version
/// negotiation included), so that the command answers with the decoding
/// error.
fn stand_in() -> String {
    format!(r#"{{"cniVersion": "{}", "name": "undecodable", "type": "{PLUGIN_TYPE}"}}"#, SpecVersion::CURRENT)
}

/// Reads stdin and puts it back for rscni, or the stand-in when it does not
/// decode: the error the commands are to answer with, if any. Stdin is read
/// only for a command that reads it (not for VERSION or a bare invocation,
/// which may come from a terminal).
pub fn take() -> Result<Option<Error>, Error> {
    let command = std::env::var("CNI_COMMAND").ok().and_then(|text| text.parse::<Cmd>().ok());
    if matches!(command, None | Some(Cmd::Version)) {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    std::io::stdin().lock().read_to_end(&mut bytes).map_err(|error| Error::IOFailure(format!("reading stdin: {error}")))?;
    let problem = decode_problem(&bytes);
    if problem.is_some() {
        bytes = stand_in().into_bytes();
    }
    put_back(&bytes).map_err(|error| Error::IOFailure(format!("handing stdin on: {error}")))?;
    Ok(problem)
}

/// Makes fd 0 a memory file holding `bytes`, read from the start (std's
/// stdin buffer is empty: it was read to the end).
fn put_back(bytes: &[u8]) -> std::io::Result<()> {
    let memory: OwnedFd = nix::sys::memfd::memfd_create(c"overlay-cni-stdin", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
    let mut file = std::fs::File::from(memory);
    file.write_all(bytes)?;
    file.rewind()?;
    nix::unistd::dup2_stdin(&file)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_of_the_wrong_type_is_refused_naming_its_key() {
        for (stdin, named) in [
            (r#"{"cniVersion": "1.0.0", "name": 5, "type": "overlay-cni"}"#, "name: invalid type: integer `5`, expected a string"),
            (r#"{"cniVersion": true, "name": "blue", "type": "overlay-cni"}"#, "cniVersion: invalid type: boolean `true`, expected a string"),
            (r#"{"cniVersion": "1.0.0", "name": "blue", "type": "overlay-cni", "ipam": []}"#, "ipam: invalid type: sequence, expected struct Ipam"),
            (r#"{"cniVersion": "1.0.0", "name": "blue", "type": "overlay-cni", "ipam": {"type": 5}}"#, "ipam.type: invalid type: integer `5`"),
            (r#"{"cniVersion": "1.0.0", "name": "blue", "type": "overlay-cni", "dns": {"nameservers": [1]}}"#, "dns.nameservers[0]: invalid type: integer `1`"),
            (r#"{"cniVersion": "1.0.0", "name": "blue", "type": "x", "capabilities": {"ips": "yes"}}"#, "capabilities.ips: invalid type: string \"yes\", expected a boolean"),
            (
                r#"{"cniVersion": "1.0.0", "name": "blue", "type": "overlay-cni", "cni.dev/valid-attachments": [{"containerID": 7}]}"#,
                "cni.dev/valid-attachments[0].containerID: invalid type: integer `7`",
            ),
            (r#"{"cniVersion": "1.0.0", "name": "blue"}"#, "the network configuration: missing field `type`"),
            (r#"{"cniVersion": "192.0.2.1", "name": "blue", "type": "overlay-cni"}"#, "cniVersion: invalid version format: 192.0.2.1"),
            ("[1, 2]", "the network configuration: invalid type: sequence, expected struct NetConf"),
            (r#"{"cniVersion": "1.0.0", "name": "blue", "type": "overlay-cni"} {}"#, "the network configuration: trailing characters"),
            (r#"{"cniVersion": "1.0.0", "name": "#, "name: EOF while parsing a value"),
        ] {
            match decode_problem(stdin.as_bytes()) {
                Some(Error::FailedToDecode(details)) => assert!(details.starts_with(named), "{stdin}: expected code 6 starting {named:?}, got {details:?}"),
                other => panic!("{stdin}: expected code 6 starting {named:?}, got {other:?}"),
            }
        }
    }

    #[test]
    fn what_decodes_or_is_not_utf8_is_left_to_rscni() {
        for stdin in [
            r#"{"cniVersion": "1.0.0", "name": "blue", "type": "overlay-cni", "agent_socket": "/s", "mtu": "x"}"#.as_bytes(),
            b"null",
            // A bad name as well as a bad version: rscni's name check (code 7) comes first.
            br#"{"cniVersion": "192.0.2.1", "name": "-blue", "type": "overlay-cni"}"#,
            b"{\"name\": \"\xff\"}",
        ] {
            assert!(decode_problem(stdin).is_none(), "{}: expected no decoding problem", String::from_utf8_lossy(stdin));
        }
        assert!(decode_problem(stand_in().as_bytes()).is_none(), "the stand-in must decode: {}", stand_in());
    }
}
