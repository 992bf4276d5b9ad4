//! Shared set-up for the services tier: the tests here run against the real RabbitMQ, Redis
//! and Garage that the test command starts (settings from `deploy/stack.sh env`), and link
//! no libtorch.

/// A name no other test run uses, for keys, job ids and message ids on shared services.
pub fn unique(what: &str) -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970").as_nanos();
    format!("{what}-{}-{nanos}", std::process::id())
}

pub mod proxy;
