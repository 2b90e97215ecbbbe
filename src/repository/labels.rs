//! Class labels read at load from each output's `label_filename`, for the classification
//! answers of Triton's protocol.

use std::{collections::HashMap, path::Path, sync::Arc};

use super::config::ModelConfig;

/// Each labelled output's labels, one per line of its file, line N naming class N.
#[derive(Debug, Clone, Default)]
pub struct Labels(HashMap<String, Arc<[String]>>);

impl Labels {
    /// Reads every `label_filename` the config names, in the model folder `dir`; a file
    /// that is missing, unreadable or empty is an error naming the output and the path.
    pub fn read(config: &ModelConfig, dir: &Path) -> Result<Labels, String> {
        let mut labels = HashMap::new();
        for output in config.output.iter().flatten() {
            let Some(file) = &output.label_filename else {
                continue;
            };
            let path = dir.join(file);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                format!(
                    "output '{}': label_filename {}: {e}",
                    output.name,
                    path.display()
                )
            })?;
            if text.lines().all(|l| l.trim().is_empty()) {
                return Err(format!(
                    "output '{}': label_filename {} holds no labels",
                    output.name,
                    path.display()
                ));
            }
            let lines: Arc<[String]> = text.lines().map(str::to_owned).collect();
            labels.insert(output.name.clone(), lines);
        }
        Ok(Labels(labels))
    }

    /// The labels of `output`, if its config names a file.
    pub fn of(&self, output: &str) -> Option<&[String]> {
        self.0.get(output).map(|l| &l[..])
    }
}
