//! `kvs_server`: see `kvs_server --help`.
fn main() -> std::process::ExitCode {
    kvs_cli::server::main()
}
