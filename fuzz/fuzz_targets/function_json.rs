//! `function.json`, as the image builder, the guest init and the host read it. What validates
//! must survive its canonical form unchanged, and the canonical form must be a fixed point.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::FunctionConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(config) = FunctionConfig::from_json(data) else {
        return;
    };
    let canonical = config.to_canonical_json();
    let again = FunctionConfig::from_json(&canonical).expect("the canonical form validates");
    assert_eq!(again, config);
    assert_eq!(again.to_canonical_json(), canonical);
    // The Runtime API server's view of it (environment, timeouts) is built without a failure.
    let env = rapid::EnvironmentConfig::from_function(
        &config,
        "/var/runtime/bootstrap".into(),
        "/var/task".into(),
    );
    assert_eq!(env.function_name, config.function_name);
});
