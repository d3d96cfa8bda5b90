//! `overlay-cni`: the CNI plugin (see the library's `cni` module).
fn main() -> std::process::ExitCode {
    overlay::cni::run()
}
