//! The evaluation manifest: CSV with a header, columns `path,label` and optionally `system`;
//! paths relative to the manifest's own folder unless absolute.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    Bonafide,
    Spoof,
}

#[derive(Debug, Clone)]
pub struct ManifestEntry {
    pub path: PathBuf,
    pub label: Label,
    /// Synthesis system of a spoof ("bonafide" for genuine files without a system).
    pub system: String,
}

#[derive(Debug)]
pub struct Manifest {
    pub entries: Vec<ManifestEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("manifest {path} has {} problem(s):\n  {}", problems.len(), problems.join("\n  "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base).map_err(|problems| ManifestError::Invalid {
            path: path.to_owned(),
            problems,
        })
    }

    /// Parses manifest text; relative paths are joined to `base`. Reports every bad row.
    pub fn parse(text: &str, base: &Path) -> Result<Self, Vec<String>> {
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .flexible(true)
            .from_reader(text.as_bytes());
        let headers = reader
            .headers()
            .map_err(|e| vec![format!("header: {e}")])?
            .clone();
        let column = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
        let (Some(path_col), Some(label_col)) = (column("path"), column("label")) else {
            return Err(vec![format!(
                "header must name columns `path` and `label` (found: {})",
                headers.iter().collect::<Vec<_>>().join(",")
            )]);
        };
        let system_col = column("system");
        let mut entries = Vec::new();
        let mut problems = Vec::new();
        for (i, record) in reader.records().enumerate() {
            let line = i + 2;
            let record = match record {
                Ok(r) => r,
                Err(e) => {
                    problems.push(format!("line {line}: {e}"));
                    continue;
                }
            };
            let path = record.get(path_col).unwrap_or("");
            if path.is_empty() {
                problems.push(format!("line {line}: empty path"));
                continue;
            }
            let label = match record
                .get(label_col)
                .unwrap_or("")
                .to_ascii_lowercase()
                .as_str()
            {
                "bonafide" | "bona-fide" | "genuine" => Label::Bonafide,
                "spoof" => Label::Spoof,
                other => {
                    problems.push(format!(
                        "line {line}: label {other:?} is neither `bonafide` nor `spoof`"
                    ));
                    continue;
                }
            };
            let system = system_col
                .and_then(|c| record.get(c))
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .unwrap_or_else(|| match label {
                    Label::Bonafide => "bonafide".into(),
                    Label::Spoof => "unknown".into(),
                });
            let p = Path::new(path);
            entries.push(ManifestEntry {
                path: if p.is_absolute() {
                    p.to_owned()
                } else {
                    base.join(p)
                },
                label,
                system,
            });
        }
        if entries.is_empty() && problems.is_empty() {
            problems.push("no rows".into());
        }
        if problems.is_empty() {
            Ok(Self { entries })
        } else {
            Err(problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_relative_paths_and_optional_system() {
        let m = Manifest::parse(
            "path,label,system\na.wav,bonafide,\nsub/b.flac,spoof,XTTS\n/abs/c.wav,spoof,\n",
            Path::new("/data"),
        )
        .unwrap();
        assert_eq!(m.entries[0].path, Path::new("/data/a.wav"));
        assert_eq!(m.entries[0].system, "bonafide");
        assert_eq!(m.entries[1].system, "XTTS");
        assert_eq!(m.entries[2].path, Path::new("/abs/c.wav"));
        assert_eq!(m.entries[2].system, "unknown");
    }

    #[test]
    fn reports_every_bad_row() {
        let problems = Manifest::parse(
            "path,label\na.wav,real\n,spoof\nc.wav,spoof\n",
            Path::new("."),
        )
        .unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("line 2"));
        assert!(problems[1].contains("line 3"));
    }

    #[test]
    fn requires_the_columns() {
        let problems = Manifest::parse("file,class\na.wav,spoof\n", Path::new(".")).unwrap_err();
        assert!(problems[0].contains("`path` and `label`"));
    }
}
