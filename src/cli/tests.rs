//! The command line's definition, defaults, headings and usage errors.

use super::*;
use clap::CommandFactory;

fn usage(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    usage_line(&Cli::try_parse_from(&args).unwrap_err(), &args)
}

#[test]
fn a_usage_error_is_one_line_naming_what_is_wrong() {
    assert_eq!(
        usage(&["sweeper", "restore"]),
        "the following required arguments were not provided: --conversation <CONVERSATION> (see `sweeper restore --help`)"
    );
    assert_eq!(
        usage(&["sweeper", "check-schedule"]),
        "the following required arguments were not provided: --schedule <SCHEDULE> (see `sweeper check-schedule --help`)"
    );
    let bad = usage(&["sweeper", "run", "--threshold", "soon"]);
    assert!(
        bad.starts_with("invalid value 'soon' for '--threshold <THRESHOLD>'")
            && bad.ends_with("(see `sweeper run --help`)"),
        "{bad}"
    );
    let unknown = usage(&["sweeper", "run", "--bogus"]);
    assert!(
        unknown.starts_with("unexpected argument '--bogus' found"),
        "{unknown}"
    );
    for line in [bad, unknown] {
        assert!(!line.contains('\n'), "{line}");
    }
}

#[test]
fn the_cli_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn every_flag_sits_under_one_of_the_shared_headings() {
    let mut cli = Cli::command();
    cli.build();
    let headings = [CONNECTION, SELECTION, WRITING, SAFETY, OUTPUT];
    for sub in cli.get_subcommands() {
        for arg in sub.get_arguments() {
            if arg.is_positional() || ["help", "version"].contains(&arg.get_id().as_str()) {
                continue;
            }
            let heading = arg.get_help_heading();
            assert!(
                heading.is_some_and(|h| headings.contains(&h)),
                "sweeper {} --{}: heading {heading:?}",
                sub.get_name(),
                arg.get_id()
            );
        }
    }
}

#[test]
fn run_defaults_match_the_documentation() {
    let cli = Cli::try_parse_from(["sweeper", "run"]).unwrap();
    let Command::Run(r) = cli.command else {
        panic!()
    };
    assert_eq!(r.select.pattern, "checkpoint:*");
    assert_eq!(r.select.threshold.threshold, Duration::from_secs(600));
    assert_eq!(r.batch_size, 500);
    assert_eq!(r.max_value_bytes, 16 << 20);
    assert!(!r.dry_run);
    assert_eq!(r.layout.format, Format::Json);
    assert_eq!(cli.global.connect_timeout, Duration::from_secs(10));
}

#[test]
fn global_flags_work_after_the_subcommand_and_bad_values_are_refused() {
    let cli = Cli::try_parse_from([
        "sweeper",
        "run",
        "--redis-url",
        "redis://h:1/",
        "--threshold",
        "90s",
    ])
    .unwrap();
    assert_eq!(cli.global.redis_url, "redis://h:1/");
    assert!(Cli::try_parse_from(["sweeper", "run", "--threshold", "soon"]).is_err());
    assert!(Cli::try_parse_from(["sweeper", "run", "--batch-size", "0"]).is_err());
    assert!(Cli::try_parse_from(["sweeper", "run", "--output", "yaml"]).is_err());
    for bad in ["3/3", "x", "3/0", "-1/3"] {
        assert!(Cli::try_parse_from(["sweeper", "run", "--shard", bad]).is_err());
    }
    assert!(Cli::try_parse_from(["sweeper", "run", "--shard", "0/3", "--shards", "3"]).is_err());
    assert!(Cli::try_parse_from(["sweeper", "run", "--shards", "0"]).is_err());
}
