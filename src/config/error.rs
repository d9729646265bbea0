use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A place in a config file: `path:line`, or the whole file when there is no line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: Arc<Path>,
    pub line: Option<usize>,
}

impl Location {
    pub fn file(file: &Arc<Path>) -> Location {
        Location { file: Arc::clone(file), line: None }
    }

    /// The location of byte `offset` of `source`, the text of `file`.
    pub fn at(file: &Arc<Path>, source: &str, offset: usize) -> Location {
        let offset = offset.min(source.len());
        let line = source.as_bytes()[..offset].iter().filter(|&&b| b == b'\n').count() + 1;
        Location { file: Arc::clone(file), line: Some(line) }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}", self.file.display()),
            None => write!(f, "{}", self.file.display()),
        }
    }
}

/// One thing wrong with the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read the config directory: {source}", dir.display())]
    Dir { dir: PathBuf, source: io::Error },
    #[error("{}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "{}: {problem}; refusing a config that anyone but root can change \
         (fix: chown root and chmod go-w, or pass --allow-insecure-config)",
        path.display()
    )]
    Untrusted { path: PathBuf, problem: String },
    #[error("{}: {problem}", path.display())]
    NotAFile { path: PathBuf, problem: &'static str },
    #[error("{at}: {message}")]
    Invalid { at: Location, message: String },
    #[error("{at}: {message} (first at {first})")]
    Conflict { at: Location, first: Location, message: String },
}

impl ConfigError {
    pub fn invalid(at: Location, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { at, message: message.into() }
    }
}

/// Everything wrong with a configuration, reported together so one edit can fix it all.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}
