//! Paths into a JSON document: `data.content`, `content[].text` (`[]`: each element of an array,
//! their text parts joined), `""` (the value itself). A step into a JSON string parses the string
//! as JSON first: hash fields and some libraries' fields hold JSON text.

use std::borrow::Cow;

use super::MappingError;
use super::json::Json;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Field(String),
    /// Each element of an array.
    Each,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    /// As written, for reject reasons.
    pub text: String,
    pub steps: Vec<Step>,
}

/// What a path found.
#[derive(Debug, Clone, PartialEq)]
pub enum Found<'v> {
    /// Nothing there (a missing field, or a value of another kind).
    None,
    /// A string, or a number's text; `number` when it was a JSON number.
    Text { text: Cow<'v, str>, number: bool },
}

impl Path {
    /// Parses `text` (the field `name` of the mapping, for the error).
    pub fn parse(name: &str, text: &str) -> Result<Path, MappingError> {
        let mut steps = Vec::new();
        if !text.is_empty() {
            for seg in text.split('.') {
                let (field, eaches) = match seg.find("[]") {
                    Some(i) => (&seg[..i], &seg[i..]),
                    None => (seg, ""),
                };
                let bad = eaches.len() % 2 != 0 || eaches.as_bytes().chunks(2).any(|c| c != b"[]");
                if bad || field.contains(['[', ']']) || (field.is_empty() && eaches.is_empty()) {
                    return Err(MappingError(format!(
                        "mapping: {name} {text:?} is not a path (fields joined by `.`, `[]` after an array)"
                    )));
                }
                if !field.is_empty() {
                    steps.push(Step::Field(field.to_string()));
                }
                steps.extend(std::iter::repeat_n(Step::Each, eaches.len() / 2));
            }
        }
        Ok(Path {
            text: text.to_string(),
            steps,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    pub fn has_each(&self) -> bool {
        self.steps.contains(&Step::Each)
    }

    /// The first field the path reads (a hash field, for binary-field rejects).
    pub fn head(&self) -> Option<&str> {
        match self.steps.first() {
            Some(Step::Field(f)) => Some(f),
            _ => None,
        }
    }

    /// The value at the path (no `[]` steps), parsing JSON text on the way.
    pub fn value<'v>(&self, v: &'v Json<'v>) -> Option<Cow<'v, Json<'v>>> {
        value_at(Cow::Borrowed(v), &self.steps)
    }

    /// The text at the path: a string, a number's text, or through `[]` the text parts found in
    /// each element joined by `join` (an array with none gives "").
    pub fn text<'v>(&self, v: &'v Json<'v>, join: &str) -> Found<'v> {
        if !self.has_each() {
            return match self.value(v) {
                Some(Cow::Borrowed(Json::String(s))) => Found::Text {
                    text: Cow::Borrowed(s.as_ref()),
                    number: false,
                },
                Some(Cow::Owned(Json::String(s))) => Found::Text {
                    text: Cow::Owned(s.into_owned()),
                    number: false,
                },
                Some(found) => match &*found {
                    Json::Number(n) => Found::Text {
                        text: Cow::Owned(n.to_string()),
                        number: true,
                    },
                    _ => Found::None,
                },
                None => Found::None,
            };
        }
        let mut parts = Vec::new();
        if collect(v, &self.steps, &mut parts) {
            Found::Text {
                text: Cow::Owned(parts.join(join)),
                number: false,
            }
        } else {
            Found::None
        }
    }
}

fn value_at<'v>(v: Cow<'v, Json<'v>>, steps: &[Step]) -> Option<Cow<'v, Json<'v>>> {
    let Some((step, rest)) = steps.split_first() else {
        return Some(v);
    };
    let Step::Field(f) = step else { return None };
    match v {
        Cow::Borrowed(Json::Object(_)) => {
            let Cow::Borrowed(o) = v else { unreachable!() };
            value_at(Cow::Borrowed(o.get(f)?), rest)
        }
        Cow::Owned(Json::Object(mut fields)) => {
            let i = fields.iter().rposition(|(k, _)| k == f)?;
            value_at(Cow::Owned(fields.swap_remove(i).1), rest)
        }
        Cow::Borrowed(Json::String(s)) => value_at(Cow::Owned(Json::parse_owned(s).ok()?), steps),
        Cow::Owned(Json::String(s)) => value_at(Cow::Owned(Json::parse_owned(&s).ok()?), steps),
        _ => None,
    }
}

/// Pushes the text parts at `steps` under `v`; false when the path leads nowhere (no array where
/// `[]` is, or a missing field before it).
fn collect(v: &Json, steps: &[Step], out: &mut Vec<String>) -> bool {
    match steps.split_first() {
        None => match v {
            Json::String(s) => {
                out.push(s.to_string());
                true
            }
            Json::Number(n) => {
                out.push(n.to_string());
                true
            }
            _ => false,
        },
        Some((Step::Field(f), rest)) => match v {
            Json::Object(_) => v.get(f).is_some_and(|x| collect(x, rest, out)),
            Json::String(s) => Json::parse_owned(s).is_ok_and(|x| collect(&x, steps, out)),
            _ => false,
        },
        Some((Step::Each, rest)) => match v {
            Json::Array(items) => {
                for item in items {
                    // An element without the part (an image block) adds nothing.
                    collect(item, rest, out);
                }
                true
            }
            Json::String(s) => Json::parse_owned(s).is_ok_and(|x| collect(&x, steps, out)),
            _ => false,
        },
    }
}
