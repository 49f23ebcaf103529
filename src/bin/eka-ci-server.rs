//! `eka-ci-server`: the eka-ci daemon. Parses its flags, sets up logging, loads the configuration and
//! hands over to `eka_ci::daemon`.
//!
//! Exit status: 0 after a clean shutdown, 2 for a configuration error (nothing was bound or opened),
//! 1 for any other failure to start or run.

use std::path::PathBuf;
use std::process::ExitCode;

use argh::FromArgs;

/// The eka-ci server: continuous integration for Nix repositories.
#[derive(FromArgs)]
struct Args {
    /// the server configuration file (default: $XDG_CONFIG_HOME/ekaci/ekaci.toml, embedded defaults when
    /// absent)
    #[argh(option)]
    config_file: Option<PathBuf>,
    /// require approval before building pull requests from authors without write access
    #[argh(switch)]
    require_approval: bool,
    /// check the configuration, print the resolved paths and exit (0 when valid, 2 otherwise)
    #[argh(switch)]
    check_config: bool,
    /// print the version and exit
    #[argh(switch)]
    version: bool,
}

fn main() -> ExitCode {
    let args: Args = argh::from_env();
    if args.version {
        println!("eka-ci-server {}", eka_ci::VERSION);
        return ExitCode::SUCCESS;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let mut loaded = match eka_ci::config::load(args.config_file.as_deref()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("eka-ci-server: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    if args.require_approval {
        loaded.config.require_approval = true;
    }
    let startup = match eka_ci::daemon::check_startup(&loaded) {
        Ok(startup) => startup,
        Err(e) => {
            eprintln!("eka-ci-server: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        for w in &loaded.warnings {
            eprintln!("warning: {w}");
        }
        for key in &loaded.not_acted_on {
            eprintln!("warning: {}", key.warning());
        }
        print!("{}", eka_ci::daemon::describe(&loaded.config, &startup.machines));
        return ExitCode::SUCCESS;
    }
    match eka_ci::daemon::run(loaded, startup) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_configuration() => {
            eprintln!("eka-ci-server: configuration error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("eka-ci-server: {e}");
            ExitCode::from(1)
        }
    }
}
