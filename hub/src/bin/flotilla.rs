//! `flotilla`: the operator CLI. Everything lives in `flotilla_hub::cli`.

fn main() -> std::process::ExitCode {
    flotilla_hub::cli::main()
}
