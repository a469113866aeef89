//! The `coffer` binary: the server (`coffer serve`) and the kubectl-like client commands.

/// jemalloc instead of glibc's malloc: the request path allocates per call (protobuf messages,
/// HTTP/2 frames, sled nodes), and glibc's malloc and free took about an eighth of the
/// server's cycles under load; jemalloc cut the server's CPU per write by about a fifth in
/// the same run, where mimalloc did as well but held a third more resident memory (README,
/// "The write path").
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    coffer::cli::main()
}
