// The integration tests link libtorch exactly as the worker does.
include!("../worker/build.rs");
