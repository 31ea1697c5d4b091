//! A plain YAML/JSON document tree that keeps what typed decoding would lose: duplicated keys
//! (a strict-decoding error upstream), `null` versus absent, and the type of each value (so an
//! error can say "a number where a string belongs" without printing the value). Strings are
//! zeroized on drop, since key secrets pass through here.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use zeroize::Zeroizing;

/// One value of the document.
pub(crate) enum Node {
    Null,
    Bool,
    Int(i128),
    Float,
    Str(Zeroizing<String>),
    Seq(Vec<Node>),
    /// Entries in file order, duplicates kept.
    Map(Vec<(String, Node)>),
}

impl Node {
    /// The type name used in error messages.
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Node::Null => "null",
            Node::Bool => "bool",
            Node::Int(_) => "number",
            Node::Float => "number",
            Node::Str(_) => "string",
            Node::Seq(_) => "list",
            Node::Map(_) => "object",
        }
    }
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never shows scalar content: it may be a secret.
        f.write_str(self.type_name())
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML or JSON value")
    }

    fn visit_bool<E: de::Error>(self, _v: bool) -> Result<Node, E> {
        Ok(Node::Bool)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(i128::from(v)))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Node, E> {
        Ok(Node::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Int(i128::from(v)))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Node, E> {
        Ok(i128::try_from(v).map_or(Node::Float, Node::Int))
    }
    fn visit_f64<E: de::Error>(self, _v: f64) -> Result<Node, E> {
        Ok(Node::Float)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(Zeroizing::new(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(Zeroizing::new(v)))
    }
    fn visit_bytes<E: de::Error>(self, _v: &[u8]) -> Result<Node, E> {
        Err(E::custom("binary values are not supported"))
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Node>()? {
            let key = match key {
                Node::Str(s) => s.as_str().to_owned(),
                Node::Int(i) => i.to_string(),
                Node::Bool => "bool".to_owned(),
                Node::Null => "null".to_owned(),
                other => {
                    return Err(de::Error::custom(format!(
                        "a mapping key must be a string, found a {}",
                        other.type_name()
                    )))
                }
            };
            let value = map.next_value::<Node>()?;
            entries.push((key, value));
        }
        Ok(Node::Map(entries))
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, _data: A) -> Result<Node, A::Error> {
        Err(de::Error::custom("YAML tags are not supported"))
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

/// Reads a document from YAML, or from JSON when it looks like JSON (JSON is YAML, but a JSON
/// parser gives better positions and accepts tabs). Error texts carry positions, not content.
pub(crate) fn read_document(bytes: &[u8]) -> Result<Node, String> {
    // The parsers stop at 128 levels, but the YAML scanner can take quadratic time on deep
    // flow nesting before it gets there; no configuration needs more than a handful of levels.
    if flow_depth_exceeds(bytes, MAX_FLOW_DEPTH) {
        return Err(format!(
            "nesting deeper than {MAX_FLOW_DEPTH} levels of [ ] or {{ }}"
        ));
    }
    let looks_like_json = bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'{');
    if looks_like_json {
        match serde_json::from_slice::<Node>(bytes) {
            Ok(node) => return Ok(node),
            Err(json_err) => {
                return serde_yaml_ng::from_slice::<Node>(bytes)
                    .map_err(|_| format!("invalid JSON: {json_err}"));
            }
        }
    }
    serde_yaml_ng::from_slice::<Node>(bytes).map_err(|e| format!("invalid YAML: {e}"))
}

/// Deepest `[`/`{` nesting accepted (brackets inside strings count too; real configurations
/// stay below 10).
const MAX_FLOW_DEPTH: usize = 64;

fn flow_depth_exceeds(bytes: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    for &b in bytes {
        match b {
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}
