// Link settings for every target that links libtorch: an rpath to the libtorch that
// torch-sys found, so binaries and tests run with no LD_LIBRARY_PATH, and libtorch_cuda
// linked with `--no-as-needed`, so CUDA kernels register even though no symbol of
// libtorch_cuda is referenced directly (otherwise `tch::Cuda::is_available()` is false
// on a GPU host).

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
