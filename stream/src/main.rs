//! The `avlm` command: serve, stream, info.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
