//! The `coffer` binary: the server (`coffer serve`) and the kubectl-like client commands.

fn main() -> std::process::ExitCode {
    coffer::cli::main()
}
