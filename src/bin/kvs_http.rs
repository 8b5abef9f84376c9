//! `kvs_http`: see `kvs_http --help`.
fn main() -> std::process::ExitCode {
    kvs_cli::http::main()
}
