//! A datapath pinned by the previous version is adopted by this one: the
//! previous version had no `UNDERLAY_MAC` map (XDP's copy of the underlay
//! MAC), which this one keeps apart from `NODE` precisely so that its pins
//! stay adoptable. The missing map is created and pinned beside the old
//! pins, the old tables become the applied state, and nothing is refused
//! as IncompatiblePin. Needs root (bpffs, BPF maps).
use std::path::PathBuf;

use overlay::{Datapath, DatapathError, MapState, pinning::PinDir};
use overlay_common::{NodeConfig, UnderlayMac, VniInfo, maps};

/// A bpffs mounted in a directory of its own, unmounted and removed on drop.
struct TempBpffs {
    dir: PathBuf,
}

impl TempBpffs {
    fn mount(scope: &str) -> anyhow::Result<TempBpffs> {
        let dir = std::env::temp_dir().join(format!("ovl-{scope}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let bpffs = TempBpffs { dir };
        overlay_lab::netns::run("mount", &["-t", "bpf", "bpf", bpffs.dir.to_str().unwrap()])?;
        Ok(bpffs)
    }
}

impl Drop for TempBpffs {
    fn drop(&mut self) {
        if let Err(error) = overlay_lab::netns::run("umount", &[self.dir.to_str().unwrap()]) {
            eprintln!("unmounting {}: {error:#}", self.dir.display());
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
fn pins_without_the_underlay_mac_map_are_adopted() -> anyhow::Result<()> {
    let bpffs = TempBpffs::mount("hardpins")?;
    let pins = PinDir::new(&bpffs.dir, "node");
    let state = MapState {
        node: Some(NodeConfig {
            vtep_addr_be: u32::from_ne_bytes([192, 0, 2, 1]),
            underlay_ifindex: 1,
            vxlan_port_be: 4789u16.to_be(),
            source_port_min: 49152,
            source_port_max: 65535,
            ttl: 64,
            learning: 0,
            configured: 1,
        }),
        vnis: [(100, VniInfo { counter_slot: 1, flood_limit: 64 })].into(),
        ..MapState::default()
    };
    {
        let mut datapath = Datapath::load_pinned(log::LevelFilter::Info, &pins, "node")?;
        datapath.apply(&state)?;
        datapath.set_underlay_mac(Some([2, 0xaa, 0xaa, 0xaa, 0xaa, 1]))?;
        // As an agent that forwarded leaves them (no attachment here).
        datapath.keep_pins();
    }
    // What the previous version left: every pin but UNDERLAY_MAC.
    let underlay_mac_pin = pins.map(maps::UNDERLAY_MAC);
    std::fs::remove_file(&underlay_mac_pin)?;

    let adopted = Datapath::load_pinned(log::LevelFilter::Info, &pins, "node");
    let result = (|| -> anyhow::Result<()> {
        let mut datapath = match adopted {
            Ok(datapath) => datapath,
            Err(error @ DatapathError::IncompatiblePin { .. }) => anyhow::bail!("the previous version's pins were refused: {error}"),
            Err(error) => return Err(error.into()),
        };
        anyhow::ensure!(datapath.adopted(), "the pinned datapath was not adopted");
        anyhow::ensure!(datapath.applied() == &state, "adopted state differs:\nexpected {state:?}\nseen {:?}", datapath.applied());
        anyhow::ensure!(underlay_mac_pin.exists(), "UNDERLAY_MAC was not pinned beside the old pins");
        // The new map starts all-zero (XDP checks nothing) until the agent writes it.
        let data = aya::maps::MapData::from_pin(&underlay_mac_pin)?;
        let map = aya::maps::Map::Array(data);
        let array: aya::maps::Array<_, UnderlayMac> = aya::maps::Array::try_from(&map)?;
        anyhow::ensure!(array.get(&0, 0)? == UnderlayMac::default(), "a new UNDERLAY_MAC should start all-zero");
        datapath.set_underlay_mac(Some([2, 0xaa, 0xaa, 0xaa, 0xaa, 1]))?;
        Ok(())
    })();
    pins.remove()?;
    result
}
