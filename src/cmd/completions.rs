//! `sweeper completions SHELL` and `sweeper man`: both made from the clap definitions.

use clap::CommandFactory;

use crate::cli::Cli;
use crate::error::{Error, Result, exit};

pub fn completions(shell: clap_complete::Shell) -> Result<u8> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "sweeper", &mut out);
    super::print(&String::from_utf8_lossy(&out))?;
    Ok(exit::OK)
}

pub fn man() -> Result<u8> {
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut out)
        .map_err(|e| Error::Other(format!("cannot render the man page: {e}")))?;
    super::print(&String::from_utf8_lossy(&out))?;
    Ok(exit::OK)
}
