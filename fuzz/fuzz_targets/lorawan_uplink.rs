//! LoRaWAN uplink events (ChirpStack and The Things Stack) on arbitrary
//! bytes: never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use twinhub_codec::lorawan::{parse_uplink, Network};

fuzz_target!(|data: &[u8]| {
    let _ = parse_uplink(Network::ChirpStack, data);
    let _ = parse_uplink(Network::TheThingsStack, data);
});
