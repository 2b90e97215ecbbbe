//! Triton's `config.pbtxt`, and the protobuf JSON of a load request's config override:
//! parsed against Triton's own `ModelConfig` schema (proto/model_config.proto), then
//! handed to `ModelConfig`'s one reader as the fields wharf acts on. Fields wharf parses
//! but ignores come back as warnings; fields whose absence would change answers refuse
//! the load, named.

use miette::Diagnostic;
use prost_reflect::{DynamicMessage, SerializeOptions};
use serde_json::{Map, Value};

use super::text_format::{line_column, prepare};
use crate::proto;

/// Larger than any real config by a wide margin (Triton's largest example is 9 KB); a
/// bigger file is a mistake, not a model.
pub const MAX_FILE_BYTES: usize = 1 << 20;

/// A config in Triton's schema, as JSON with the proto's field names (the form the YAML
/// reader's serde types take), and what wharf will not act on in it.
#[derive(Debug)]
pub struct Read {
    pub fields: Value,
    pub warnings: Vec<String>,
}

/// Parses protobuf text format; an error names the line, the column and what was wrong.
pub fn parse_text(text: &str) -> Result<DynamicMessage, String> {
    if text.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{} bytes is over the limit of {MAX_FILE_BYTES} bytes for a model config",
            text.len()
        ));
    }
    let prepared = prepare(text).map_err(|(line, what)| format!("line {line}: {what}"))?;
    DynamicMessage::parse_text_format(proto::message("ModelConfig"), &prepared.text).map_err(|e| {
        let at = e
            .labels()
            .and_then(|mut labels| labels.next())
            .map(|label| prepared.original_offset(label.offset()));
        match at {
            Some(offset) => {
                let (line, column) = line_column(text, offset);
                format!("line {line}, column {column}: {e}")
            }
            // Only the end of input has no place: say which line that is.
            None => format!("line {}: {e}", line_column(text, text.len()).0),
        }
    })
}

/// Parses protobuf JSON (a load request's `config`), as Triton does: quoted numbers,
/// proto or JSON field names, enum names.
pub fn parse_json(text: &str) -> Result<DynamicMessage, String> {
    let mut de = serde_json::Deserializer::from_str(text);
    let message = DynamicMessage::deserialize(proto::message("ModelConfig"), &mut de)
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(message)
}

/// The set fields of `message`, checked against what wharf acts on.
pub fn read(message: &DynamicMessage) -> Result<Read, String> {
    let options = SerializeOptions::new()
        .stringify_64_bit_integers(false)
        .use_proto_field_name(true)
        .skip_default_fields(true);
    let mut fields = message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| e.to_string())?;
    let mut warnings = Vec::new();
    let top = fields
        .as_object_mut()
        .expect("a message serialises to an object");
    check(top, "", &MODEL_CONFIG, &mut warnings)?;
    if let Some(samples) = top.get_mut("model_warmup").and_then(Value::as_array_mut) {
        samples.retain(|sample| {
            let from_file = sample["inputs"].as_object().is_some_and(|inputs| {
                inputs
                    .values()
                    .any(|input| input.get("input_data_file").is_some())
            });
            if from_file {
                warnings.push(format!(
                    "model_warmup '{}': reads input_data_file, which wharf cannot synthesise; \
                     the sample is skipped",
                    sample["name"].as_str().unwrap_or_default()
                ));
            }
            !from_file
        });
    }
    // Triton's `onnxruntime` names its ONNX engine; wharf serves such a model on ONNX
    // Runtime where its library is present, else on tract (logged at load), so that a
    // Triton repository serves on the tract-only image too.
    if top.get("backend") == Some(&Value::from("onnxruntime")) {
        top.insert(
            "backend".into(),
            serde_json::json!(["onnxruntime", "tract"]),
        );
    }
    // Triton's auto-complete leaves a config that names both inputs and outputs as it is:
    // no max_batch_size means 0, not one read from the graph.
    if top.contains_key("input") && top.contains_key("output") {
        top.entry("max_batch_size").or_insert(Value::from(0));
    }
    Ok(Read { fields, warnings })
}

/// What wharf does with a field of Triton's schema.
enum Rule {
    /// Read, and acted on.
    Act,
    /// Read into a message whose own fields have rules.
    Nested(&'static Rules),
    /// Parsed and ignored, with why.
    Ignore(&'static str),
    /// Refused: serving without it would answer differently than Triton.
    Refuse(&'static str),
}

type Rules = [(&'static str, Rule)];

const MODEL_CONFIG: [(&str, Rule); 25] = [
    ("name", Rule::Act),
    ("platform", Rule::Act),
    ("backend", Rule::Act),
    (
        "runtime",
        Rule::Ignore("wharf picks the engine by backend and platform"),
    ),
    ("version_policy", Rule::Act),
    ("max_batch_size", Rule::Act),
    ("input", Rule::Nested(&INPUT)),
    ("output", Rule::Nested(&OUTPUT)),
    (
        "batch_input",
        Rule::Refuse("wharf does not build batch inputs, and the model reads them"),
    ),
    (
        "batch_output",
        Rule::Refuse("wharf does not scatter batch outputs"),
    ),
    (
        "optimization",
        Rule::Ignore("wharf tunes its engines through parameters"),
    ),
    ("dynamic_batching", Rule::Nested(&DYNAMIC_BATCHING)),
    (
        "sequence_batching",
        Rule::Refuse(
            "wharf has no sequence batcher, and a stateful model served without one answers \
         each request out of its sequence",
        ),
    ),
    ("ensemble_scheduling", Rule::Nested(&ENSEMBLE)),
    ("instance_group", Rule::Nested(&INSTANCE_GROUP)),
    ("default_model_filename", Rule::Act),
    (
        "cc_model_filenames",
        Rule::Ignore("wharf serves one model file per version"),
    ),
    (
        "metric_tags",
        Rule::Ignore("wharf's metrics carry model and version"),
    ),
    ("parameters", Rule::Act),
    ("model_warmup", Rule::Act),
    (
        "model_operations",
        Rule::Ignore("wharf loads no custom operation libraries"),
    ),
    (
        "model_transaction_policy",
        Rule::Refuse(
            "wharf answers each request once; a decoupled model's many answers would be lost",
        ),
    ),
    (
        "model_repository_agents",
        Rule::Ignore("wharf runs no repository agents"),
    ),
    (
        "response_cache",
        Rule::Ignore("wharf has no response cache"),
    ),
    ("model_metrics", Rule::Ignore("wharf's metrics are fixed")),
];

const INPUT: [(&str, Rule); 9] = [
    ("name", Rule::Act),
    ("data_type", Rule::Act),
    ("format", Rule::Act),
    ("dims", Rule::Act),
    ("reshape", Rule::Act),
    ("is_shape_tensor", Rule::Refuse("wharf has no shape tensors")),
    ("allow_ragged_batch", Rule::Refuse(
        "wharf batches only same-shape inputs; a ragged batch would be refused request by request",
    )),
    ("optional", Rule::Ignore("wharf requires every input")),
    ("is_non_linear_format_io", Rule::Refuse("wharf has no non-linear tensor formats")),
];

const OUTPUT: [(&str, Rule); 7] = [
    ("name", Rule::Act),
    ("data_type", Rule::Act),
    ("dims", Rule::Act),
    ("reshape", Rule::Act),
    ("label_filename", Rule::Act),
    (
        "is_shape_tensor",
        Rule::Refuse("wharf has no shape tensors"),
    ),
    (
        "is_non_linear_format_io",
        Rule::Refuse("wharf has no non-linear tensor formats"),
    ),
];

const DYNAMIC_BATCHING: [(&str, Rule); 7] = [
    ("preferred_batch_size", Rule::Act),
    ("max_queue_delay_microseconds", Rule::Act),
    ("preserve_ordering", Rule::Act),
    ("priority_levels", Rule::Act),
    ("default_priority_level", Rule::Act),
    ("default_queue_policy", Rule::Act),
    (
        "priority_queue_policy",
        Rule::Ignore("every priority level follows default_queue_policy"),
    ),
];

const INSTANCE_GROUP: [(&str, Rule); 9] = [
    ("name", Rule::Act),
    ("count", Rule::Act),
    ("kind", Rule::Act),
    ("gpus", Rule::Act),
    ("profile", Rule::Ignore("wharf has no TensorRT profiles")),
    (
        "passive",
        Rule::Ignore("every wharf instance takes requests"),
    ),
    ("host_policy", Rule::Ignore("wharf has no host policies")),
    (
        "secondary_devices",
        Rule::Ignore("wharf runs an instance on one device"),
    ),
    (
        "rate_limiter",
        Rule::Ignore("wharf's admission limits are server-wide"),
    ),
];

const ENSEMBLE: [(&str, Rule); 2] = [
    ("step", Rule::Nested(&ENSEMBLE_STEP)),
    (
        "max_inflight_requests",
        Rule::Ignore("an ensemble's steps queue in their own models' bounded queues"),
    ),
];

const ENSEMBLE_STEP: [(&str, Rule); 5] = [
    ("model_name", Rule::Act),
    ("model_version", Rule::Act),
    ("input_map", Rule::Act),
    ("output_map", Rule::Act),
    (
        "model_namespace",
        Rule::Ignore("wharf's repository has one namespace"),
    ),
];

/// Removes the ignored fields of `object` (a message of `rules`, or a list of them at
/// `path`), warning for each; errs on the first refused one.
fn check(
    object: &mut Map<String, Value>,
    path: &str,
    rules: &Rules,
    warnings: &mut Vec<String>,
) -> Result<(), String> {
    let keys: Vec<String> = object.keys().cloned().collect();
    for key in keys {
        let field = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        let rule = rules
            .iter()
            .find(|(name, _)| *name == key)
            .map(|(_, rule)| rule)
            .unwrap_or(&Rule::Act);
        match rule {
            Rule::Act => {}
            Rule::Nested(inner) => match object.get_mut(&key) {
                Some(Value::Array(items)) => {
                    for item in items.iter_mut().filter_map(Value::as_object_mut) {
                        check(item, &field, inner, warnings)?;
                    }
                }
                Some(Value::Object(message)) => check(message, &field, inner, warnings)?,
                _ => {}
            },
            Rule::Ignore(why) => {
                warnings.push(format!("`{field}` is not acted on: {why}"));
                object.remove(&key);
            }
            Rule::Refuse(why) => {
                // A transaction policy that is not decoupled changes nothing.
                let decoupled = object[&key].get("decoupled") == Some(&Value::Bool(true));
                if key == "model_transaction_policy" && !decoupled {
                    object.remove(&key);
                    continue;
                }
                return Err(format!("`{field}` cannot be served: {why}"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triton_simple_reads_as_written() {
        let message = parse_text(
            "name: \"simple\"\nplatform: \"onnxruntime_onnx\"\nmax_batch_size: 8\n\
             input [ { name: \"INPUT0\" data_type: TYPE_INT32 dims: [ 16 ] } ]\n\
             output [ { name: \"OUTPUT0\" data_type: TYPE_INT32 dims: 16 } ]",
        )
        .unwrap();
        let fields = super::read(&message).unwrap();
        assert_eq!(fields.fields["max_batch_size"], 8);
        assert_eq!(fields.fields["input"][0]["data_type"], "TYPE_INT32");
        assert_eq!(fields.fields["output"][0]["dims"], serde_json::json!([16]));
        assert!(fields.warnings.is_empty(), "{:?}", fields.warnings);
    }

    #[test]
    fn errors_name_line_column_and_field() {
        let err = parse_text("name: \"m\"\n  colour: 3\n").unwrap_err();
        assert!(err.starts_with("line 2, column 3:"), "{err}");
        assert!(err.contains("colour"), "{err}");
        let err = parse_text("input [ { name: \"x\" data_type: TYPE_FLOAT } ]").unwrap_err();
        assert!(
            err.contains("line 1, column 32") && err.contains("TYPE_FLOAT"),
            "{err}"
        );
        let err = parse_text("max_batch_size: 1\nmax_batch_size: 2").unwrap_err();
        assert!(
            err.starts_with("line 2") && err.contains("already set"),
            "{err}"
        );
        let err = parse_text("dynamic_batching { }\nsequence_batching { }").unwrap_err();
        assert!(err.starts_with("line 2") && err.contains("oneof"), "{err}");
        let err = parse_text("input [ { name: \"x\"").unwrap_err();
        assert!(err.contains("end of input"), "{err}");
        let err = parse_text("max_batch_size: \"8\"").unwrap_err();
        assert!(err.starts_with("line 1, column 17"), "{err}");
    }

    #[test]
    fn ignored_fields_warn_and_refused_ones_fail() {
        let message = parse_text(
            "optimization { cuda { graphs: true } }\n\
             instance_group [ { kind: KIND_CPU count: 2 host_policy: \"x\" } ]\n\
             model_transaction_policy { decoupled: false }",
        )
        .unwrap();
        let fields = super::read(&message).unwrap();
        assert_eq!(fields.warnings.len(), 2, "{:?}", fields.warnings);
        assert!(fields.warnings[0].contains("`instance_group.host_policy`"));
        assert!(fields.warnings[1].contains("`optimization`"));
        assert!(fields.fields.get("optimization").is_none());
        assert!(fields.fields.get("model_transaction_policy").is_none());
        for (text, field) in [
            ("sequence_batching { }", "`sequence_batching`"),
            (
                "model_transaction_policy { decoupled: true }",
                "`model_transaction_policy`",
            ),
            (
                "input [ { name: \"x\" allow_ragged_batch: true } ]",
                "`input.allow_ragged_batch`",
            ),
            (
                "batch_input [ { kind: BATCH_ELEMENT_COUNT } ]",
                "`batch_input`",
            ),
        ] {
            let err = read(&parse_text(text).unwrap()).unwrap_err();
            assert!(err.starts_with(field), "{text}: {err}");
        }
    }

    #[test]
    fn the_load_override_is_protobuf_json() {
        let message = parse_json(
            r#"{"max_batch_size": "16", "input": [{"name": "x", "dataType": "TYPE_FP32"}]}"#,
        )
        .unwrap();
        let fields = super::read(&message).unwrap();
        assert_eq!(fields.fields["max_batch_size"], 16);
        assert_eq!(fields.fields["input"][0]["data_type"], "TYPE_FP32");
        assert!(parse_json(r#"{"colour": 1}"#)
            .unwrap_err()
            .contains("colour"));
    }

    #[test]
    fn huge_files_are_refused_before_parsing() {
        let text = format!("name: \"{}\"", "x".repeat(MAX_FILE_BYTES));
        assert!(parse_text(&text).unwrap_err().contains("over the limit"));
    }
}
