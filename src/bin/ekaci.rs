//! `ekaci`: the admin CLI of eka-ci. All logic lives in `eka_ci::cli`.

fn main() -> std::process::ExitCode {
    eka_ci::cli::main(argh::from_env())
}
