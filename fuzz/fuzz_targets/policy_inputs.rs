//! The policy ABI's inputs from arbitrary bytes, as a guest sees them: every request message
//! decodes (or is refused) without panicking, and what decodes re-encodes and decodes to the
//! same message (the host and the SDK agree on the encoding). Also the SDK's config parser,
//! which every example policy runs on untrusted binding configs in `init`.

#![no_main]

use holdfast_policy_sdk::{
    AdmitRequest, ChooseNextRequest, Config, ElectRequest, InitRequest, LeaseForRequest,
    OnSessionExpireRequest,
};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    if let Ok(message) = M::decode(bytes) {
        let again = M::decode(message.encode_to_vec().as_slice()).expect("own encoding decodes");
        assert_eq!(again, message);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<InitRequest>(data);
    round_trip::<AdmitRequest>(data);
    round_trip::<ChooseNextRequest>(data);
    round_trip::<LeaseForRequest>(data);
    round_trip::<OnSessionExpireRequest>(data);
    round_trip::<ElectRequest>(data);
    if let Ok(config) = Config::parse(data) {
        for (key, _) in config.entries() {
            let _ = config.u64_or(key, 0);
            let _ = config.list(key);
        }
    }
});
