//! `kvs_client`: see `kvs_client --help`.
fn main() -> std::process::ExitCode {
    kvs_client::cli::main()
}
