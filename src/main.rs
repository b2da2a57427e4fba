#![forbid(unsafe_code)]

use std::process::ExitCode;

/// jemalloc, set up (.cargo/config.toml) to return freed memory at once: glibc's malloc
/// holds on to freed memory below a threshold that rises with every large block freed.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    mailtls::cli::main()
}
