//! `kvs_client`: see `kvs_client --help`.
fn main() -> std::process::ExitCode {
    kvs_cli::client::main()
}
