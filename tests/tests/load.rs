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
