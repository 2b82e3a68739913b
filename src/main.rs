//! weftd: the node daemon. All logic lives in the library; see `weft::daemon`.

fn main() -> std::process::ExitCode {
    weft::main_with_args(std::env::args_os().collect())
}
