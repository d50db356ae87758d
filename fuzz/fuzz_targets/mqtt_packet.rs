//! The MQTT packet reader on arbitrary bytes, for both protocol versions
//! and before CONNECT: it must never panic, and a buffer it cannot frame
//! yet must not be consumed.
#![no_main]
use libfuzzer_sys::fuzz_target;
use twinhub_server::mqtt::codec::{read, Version};

fuzz_target!(|data: &[u8]| {
    for version in [None, Some(Version::V4), Some(Version::V5)] {
        let mut buf = bytes::BytesMut::from(data);
        for _ in 0..64 {
            let before = buf.len();
            match read(&mut buf, version, 1 << 16) {
                Ok(Some(_)) => assert!(buf.len() < before),
                Ok(None) => {
                    assert_eq!(buf.len(), before);
                    break;
                }
                Err(_) => break,
            }
        }
    }
});
