// The integration tests link libtorch exactly as the worker does.
include!("../../build/libtorch.rs");
