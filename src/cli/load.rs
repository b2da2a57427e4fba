//! Reading resources from YAML/JSON files and directories (the CLI's stand-in for the API
//! server): multi-document files, `kind: List`, unknown fields and every error reported
//! with file, line, resource and field.

use super::yaml_limits;
mod block;
mod fast;
use crate::api::{AddressList, GROUP, OutboundGateway, TlsCompliance, VERSION};
use crate::engine::Managed;
use crate::policy::entry::display_raw;
use crate::policy::{Inputs, ResourceId};
use kube::ResourceExt;
use serde::de::DeserializeOwned;
use serde_norway::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// Where a resource was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub file: PathBuf,
    /// Line where its YAML document starts (1-based).
    pub line: usize,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// A problem found while reading, or later tied back to a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadError {
    pub source: Option<Source>,
    pub resource: Option<String>,
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = &self.source {
            write!(f, "{s}: ")?;
        }
        if let Some(r) = &self.resource {
            write!(f, "{r}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        // Parser messages may quote raw input; never print its control characters.
        for c in self.message.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_fmt(format_args!("{c}"))?;
            }
        }
        Ok(())
    }
}

/// Everything read, grouped by namespace.
#[derive(Debug, Default)]
pub struct Loaded {
    pub namespaces: BTreeMap<String, Inputs>,
    pub sources: HashMap<(String, ResourceId), Source>,
    /// Resources read from a document of their own (not an item of a `kind: List`), whose
    /// fields can be found by line in it.
    own_documents: HashSet<(String, ResourceId)>,
    /// Documents of other kinds that were passed over (`file:line kind`).
    pub skipped: Vec<String>,
}

impl Loaded {
    pub fn source(&self, namespace: &str, id: &ResourceId) -> Option<&Source> {
        self.sources.get(&(namespace.to_string(), id.clone()))
    }
}

/// Finds the line of a field of a loaded resource (`spec.entries[41]`), for problems found
/// after loading. The texts are not kept while loading (a large list's file can be most of
/// the memory), so each file involved is read again, once; a document whose fields cannot be
/// found by line, or a file that cannot be read again, gives the document's line.
pub struct Locator<'a> {
    loaded: &'a Loaded,
    /// Per file read again: its documents' texts by their first line.
    files: HashMap<PathBuf, Option<HashMap<usize, String>>>,
}

impl<'a> Locator<'a> {
    pub fn new(loaded: &'a Loaded) -> Self {
        Locator {
            loaded,
            files: HashMap::new(),
        }
    }

    pub fn locate(&mut self, namespace: &str, id: &ResourceId, field: &str) -> Option<Source> {
        let source = self.loaded.source(namespace, id)?;
        let key = (namespace.to_string(), id.clone());
        if !self.loaded.own_documents.contains(&key) {
            return Some(source.clone());
        }
        let file = self.files.entry(source.file.clone()).or_insert_with(|| {
            let text = std::fs::read_to_string(&source.file).ok()?;
            let docs = documents(&source.file, &text, &mut Vec::new());
            Some(
                docs.into_iter()
                    .map(|d| (d.source.line, d.text.to_string()))
                    .collect(),
            )
        });
        // `spec.bulk (item 7)`: the line of `bulk`.
        let path = field.split(" (").next().unwrap_or(field);
        let offset = file
            .as_ref()
            .and_then(|docs| docs.get(&source.line))
            .and_then(|doc| field_line(doc, path))
            .unwrap_or(0);
        Some(Source {
            file: source.file.clone(),
            line: source.line + offset,
        })
    }
}

/// Read every file (directories recursively: `*.yaml`, `*.yml`, `*.json`, hidden names
/// skipped). Resources without a namespace get `default_namespace`. Errors do not stop the
/// reading: all of them come back together.
pub fn load(paths: &[PathBuf], default_namespace: &str) -> (Loaded, Vec<LoadError>) {
    let mut loaded = Loaded::default();
    let mut errors = Vec::new();
    let mut files = Vec::new();
    for path in paths {
        if let Err(e) = collect_files(path, &mut files) {
            errors.push(LoadError {
                source: None,
                resource: None,
                field: None,
                message: format!("{}: {e}", path.display()),
            });
        }
    }
    // Every file is read first: its documents are slices of its text, not copies.
    let mut texts = Vec::new();
    for file in files {
        // Refused before reading: a huge file would cost its size in memory first.
        let size = std::fs::metadata(&file).map_or(0, |m| m.len());
        if let Err(e) = yaml_limits::check_size(size) {
            errors.push(too_big(&file, e));
            continue;
        }
        match std::fs::read_to_string(&file) {
            Ok(text) => texts.push((file, text)),
            Err(e) => errors.push(LoadError {
                source: Some(Source {
                    file: file.clone(),
                    line: 1,
                }),
                resource: None,
                field: None,
                message: format!("cannot read: {e}"),
            }),
        }
    }
    let mut docs = Vec::new();
    for (file, text) in &texts {
        docs.extend(documents(file, text, &mut errors));
    }
    load_documents(docs, default_namespace, &mut loaded, &mut errors);
    (loaded, errors)
}

/// Read resources from one YAML text (as if it were the file `name`).
pub fn load_str(name: &str, text: &str, default_namespace: &str) -> (Loaded, Vec<LoadError>) {
    let mut loaded = Loaded::default();
    let mut errors = Vec::new();
    let docs = documents(Path::new(name), text, &mut errors);
    load_documents(docs, default_namespace, &mut loaded, &mut errors);
    (loaded, errors)
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if meta.is_file() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for entry in entries {
        let name = entry
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') {
            continue;
        }
        if entry.is_dir() {
            collect_files(&entry, out)?;
        } else if [".yaml", ".yml", ".json"]
            .iter()
            .any(|ext| name.ends_with(ext))
        {
            out.push(entry);
        }
    }
    Ok(())
}

/// One YAML document of a file, or one item of a JSON `kind: List`.
struct Document<'a> {
    /// Where it starts (an item: where its list starts).
    source: Source,
    /// Its lines, without the `---` or `...` that ends it.
    text: &'a str,
    /// An item of a list: its fields are not looked for line by line.
    list_item: bool,
}

/// Split a YAML stream into documents with the line each starts on; none, and an error,
/// when the text is larger than a file may be.
fn documents<'a>(file: &Path, text: &'a str, errors: &mut Vec<LoadError>) -> Vec<Document<'a>> {
    let mut docs = Vec::new();
    if let Err(e) = yaml_limits::check_size(text.len() as u64) {
        errors.push(too_big(file, e));
        return docs;
    }
    let (mut begin, mut start_line) = (0, 1);
    let mut push = |line: usize, text: &'a str| {
        docs.push(Document {
            source: Source {
                file: file.to_path_buf(),
                line,
            },
            text,
            list_item: false,
        })
    };
    let mut at = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches('\n').trim_end_matches('\r');
        if bare == "---" || bare.starts_with("--- ") || bare == "..." {
            push(start_line, &text[begin..at]);
            begin = at + line.len();
            start_line = i + 2;
        }
        at += line.len();
    }
    push(start_line, &text[begin..]);
    docs
}

/// Parse and type every document, several at once (that is most of the time on large
/// inputs), then add them to `loaded` in their order.
fn load_documents(
    docs: Vec<Document>,
    default_ns: &str,
    loaded: &mut Loaded,
    errors: &mut Vec<LoadError>,
) {
    let docs: Vec<Document> = docs.into_iter().flat_map(json_list_items).collect();
    let read = crate::parallel::map(&docs, read_document);
    for (doc, read) in docs.iter().zip(read) {
        match read {
            Ok(read) => apply(
                read,
                &doc.source,
                (!doc.list_item).then_some(doc.text),
                default_ns,
                loaded,
                errors,
            ),
            Err(e) => errors.push(e),
        }
    }
}

/// The top of a JSON `kind: List` (as `kubectl get -o json` writes it), its items left as
/// text.
#[derive(serde::Deserialize)]
struct JsonList<'a> {
    kind: &'a str,
    #[serde(borrow)]
    items: Vec<&'a serde_json::value::RawValue>,
}

/// The items of a JSON `kind: List` as documents of their own, each parsed alone and on
/// every core, where the whole list as one value took five times the file's size in memory.
/// Any other document, and any list this cannot take apart (too deep, escaped text where
/// `kind` is, `items` not a list, not JSON), stays whole for the path that reports why.
fn json_list_items(doc: Document) -> Vec<Document> {
    let candidate = doc.text.trim_start().starts_with('{')
        && doc.text.contains("\"List\"")
        && yaml_limits::check_depth(doc.text).is_ok();
    let items = candidate
        .then(|| serde_json::from_str::<JsonList>(doc.text).ok())
        .flatten()
        .filter(|list| list.kind == "List");
    let Some(list) = items else {
        return vec![doc];
    };
    list.items
        .into_iter()
        .map(|item| Document {
            source: doc.source.clone(),
            text: item.get(),
            list_item: true,
        })
        .collect()
}

/// A document read as far as it can be alone, or why it cannot be read: too deep (checked
/// before the parser sees it), or not valid YAML (with the line).
fn read_document(doc: &Document) -> Result<Doc, LoadError> {
    let (file, line) = (&doc.source.file, doc.source.line);
    if let Err(mut e) = yaml_limits::check_depth(doc.text) {
        e.line += line - 1;
        return Err(too_big(file, e));
    }
    if let Some(read) = fast::address_list(doc.text) {
        return Ok(read);
    }
    parse(doc.text).map(classify).map_err(|e| {
        let at = e.location().map_or(line, |l| line + l.line() - 1);
        LoadError {
            source: Some(Source {
                file: file.to_path_buf(),
                line: at,
            }),
            resource: None,
            field: None,
            message: format!("not valid YAML: {e}"),
        }
    })
}

/// A document written as JSON (a `.json` file, or JSON-style YAML with quoted keys) is read
/// by the JSON parser, several times faster than libyaml on large lists; anything else, and
/// any JSON it refuses (comments, duplicate keys, ...), by the YAML parser, whose errors
/// carry their location. JSON is YAML, so both give the same value.
fn parse(doc: &str) -> Result<Value, serde_norway::Error> {
    if doc.trim_start().starts_with('{')
        && let Ok(value) = serde_json::from_str::<Value>(doc)
    {
        return Ok(value);
    }
    serde_norway::from_str(doc)
}

fn too_big(file: &Path, e: yaml_limits::TooBig) -> LoadError {
    LoadError {
        source: Some(Source {
            file: file.to_path_buf(),
            line: e.line,
        }),
        resource: None,
        field: None,
        message: e.message,
    }
}

/// A document read as far as it can be without the others: its kind and, for ours, the
/// typed resource (done on the parsing threads, so the value is freed there too).
enum Doc {
    /// An empty document.
    Empty,
    /// Refused: why.
    Refused(String),
    /// Another API group's document, passed over: its kind.
    Skipped(String),
    List(Vec<Doc>),
    AddressList(Typed<AddressList>),
    TlsCompliance(Typed<TlsCompliance>),
    OutboundGateway(Typed<OutboundGateway>),
}

/// A resource of ours as read: the name it claims (for messages when it cannot be read),
/// and the resource with its unknown fields, or every field that is wrong.
struct Typed<K> {
    name_hint: String,
    read: Result<(K, Vec<String>), FieldProblems>,
}

impl<K: DeserializeOwned> Typed<K> {
    fn new(value: Value, name_hint: String) -> Self {
        Typed {
            name_hint,
            read: typed_all(value),
        }
    }
}

/// What a parsed document is; ours are typed here, on the parsing threads.
fn classify(value: Value) -> Doc {
    let Value::Mapping(map) = &value else {
        return if value.is_null() {
            Doc::Empty
        } else {
            Doc::Refused("a document must be a mapping with apiVersion and kind".into())
        };
    };
    let get = |k: &str| map.get(k).and_then(Value::as_str).map(str::to_string);
    let (api_version, kind) = (
        get("apiVersion").unwrap_or_default(),
        get("kind").unwrap_or_default(),
    );
    let name_hint = map
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_string();
    if kind == "List" {
        let items = match value {
            Value::Mapping(mut map) => match map.remove("items") {
                Some(Value::Sequence(items)) => items,
                _ => Vec::new(),
            },
            _ => Vec::new(),
        };
        return Doc::List(items.into_iter().map(classify).collect());
    }
    let group = api_version.split_once('/').map_or("", |(g, _)| g);
    if group != GROUP {
        return Doc::Skipped(if kind.is_empty() {
            "(no kind)".into()
        } else {
            kind
        });
    }
    let expected = format!("{GROUP}/{VERSION}");
    if api_version != expected {
        return Doc::Refused(format!(
            "apiVersion {api_version} is not served; use {expected}"
        ));
    }
    match kind.as_str() {
        "AddressList" => Doc::AddressList(Typed::new(value, name_hint)),
        "TlsCompliance" => Doc::TlsCompliance(Typed::new(value, name_hint)),
        "OutboundGateway" => Doc::OutboundGateway(Typed::new(value, name_hint)),
        other => Doc::Refused(format!(
            "unknown kind '{other}' in {GROUP}; expected AddressList, TlsCompliance or OutboundGateway"
        )),
    }
}

/// Add a document to `loaded`, or say why not. `doc`: its text, to find the line of a field
/// (none for `List` items).
fn apply(
    read: Doc,
    source: &Source,
    doc: Option<&str>,
    default_ns: &str,
    loaded: &mut Loaded,
    errors: &mut Vec<LoadError>,
) {
    match read {
        Doc::Empty => {}
        Doc::Refused(message) => errors.push(LoadError {
            source: Some(source.clone()),
            resource: None,
            field: None,
            message,
        }),
        Doc::Skipped(kind) => loaded.skipped.push(format!("{source} {kind}")),
        Doc::List(items) => {
            for item in items {
                apply(item, source, None, default_ns, loaded, errors);
            }
        }
        Doc::AddressList(t) => add(t, source, doc, default_ns, loaded, errors),
        Doc::TlsCompliance(t) => add(t, source, doc, default_ns, loaded, errors),
        Doc::OutboundGateway(t) => add(t, source, doc, default_ns, loaded, errors),
    }
}

/// Add one resource of kind `K` to its namespace's inputs, or say why not.
fn add<K: Managed>(
    typed: Typed<K>,
    source: &Source,
    doc: Option<&str>,
    default_ns: &str,
    loaded: &mut Loaded,
    errors: &mut Vec<LoadError>,
) {
    let name_hint = typed.name_hint;
    let kind = K::KIND;
    // The line of a field, when the document's text shows it; else the document's.
    let at = |field: Option<&str>| Source {
        file: source.file.clone(),
        line: source.line
            + field
                .zip(doc)
                .and_then(|(f, d)| field_line(d, f))
                .unwrap_or(0),
    };
    let (resource, unknown) = match typed.read {
        Ok(r) => r,
        Err(problems) => {
            for (field, message) in problems {
                errors.push(LoadError {
                    source: Some(at(field.as_deref())),
                    resource: Some(format!("{kind}/{name_hint}")),
                    field,
                    message,
                });
            }
            return;
        }
    };
    let (namespace, name) = (ns_of(&resource, default_ns), resource.name_any());
    let id = ResourceId::new(kind, name.clone());
    let mut problems: Vec<(Option<String>, String)> = unknown
        .into_iter()
        .map(|f| {
            (
                Some(f),
                "unknown field (misspelt? see `mailtls crds` for the schema)".to_string(),
            )
        })
        .collect();
    if let Err(m) = check_name(&name, 253) {
        problems.push((Some("metadata.name".into()), m));
    }
    if let Err(m) = check_name(&namespace, 63) {
        problems.push((Some("metadata.namespace".into()), m));
    }
    if let Some(first) = loaded.sources.get(&(namespace.clone(), id.clone())) {
        problems.push((
            None,
            format!("defined twice in namespace {namespace} (first at {first})"),
        ));
    }
    if !problems.is_empty() {
        for (field, message) in problems {
            errors.push(LoadError {
                source: Some(at(field.as_deref())),
                resource: Some(format!("{kind}/{}", display_raw(&name))),
                field,
                message,
            });
        }
        return;
    }
    if doc.is_some() {
        loaded.own_documents.insert((namespace.clone(), id.clone()));
    }
    loaded
        .sources
        .insert((namespace.clone(), id), source.clone());
    let inputs = loaded
        .namespaces
        .entry(namespace.clone())
        .or_insert_with(|| Inputs {
            namespace,
            ..Default::default()
        });
    K::of_mut(inputs).push(resource);
}

fn ns_of<K: kube::Resource>(r: &K, default_ns: &str) -> String {
    r.meta()
        .namespace
        .clone()
        .unwrap_or_else(|| default_ns.to_string())
}

/// Most type errors reported for one document.
const MAX_TYPE_ERRORS: usize = 20;

/// Problems with one document: the field (when known) and what is wrong with it.
type FieldProblems = Vec<(Option<String>, String)>;

/// [`typed`], reporting every field of the wrong type rather than the first: each one found
/// is taken out of the document and it is read again. Stops at a field the type needs (its
/// absence is then the next error, which would only repeat the first) or one inside a list.
fn typed_all<T: DeserializeOwned>(mut value: Value) -> Result<(T, Vec<String>), FieldProblems> {
    let mut problems: FieldProblems = Vec::new();
    loop {
        match typed::<T>(&value) {
            Ok(ok) if problems.is_empty() => return Ok(ok),
            Ok(_) => return Err(problems),
            Err((field, message)) => {
                let removed_before = message.starts_with("missing field")
                    && problems.iter().any(|(f, _)| {
                        f.as_deref()
                            .and_then(|f| f.rsplit('.').next())
                            .is_some_and(|last| message.contains(&format!("`{last}`")))
                    });
                if removed_before {
                    return Err(problems);
                }
                let removable = field
                    .as_deref()
                    .is_some_and(|f| remove_field(&mut value, f));
                problems.push((field, message));
                if !removable || problems.len() >= MAX_TYPE_ERRORS {
                    return Err(problems);
                }
            }
        }
    }
}

/// Path segments of a serde path (`spec.addressLists[0].name`): keys and list indexes.
enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
        if !key.is_empty() {
            out.push(Segment::Key(key));
        }
        while let Some((n, after)) = rest.split_once(']') {
            if let Ok(i) = n.parse() {
                out.push(Segment::Index(i));
            }
            rest = after.strip_prefix('[').unwrap_or(after);
        }
    }
    out
}

/// Take the mapping key at `path` out of `value`; false when the path does not end in a key
/// that is there.
fn remove_field(value: &mut Value, path: &str) -> bool {
    let segs = segments(path);
    let Some((Segment::Key(last), parents)) = segs.split_last() else {
        return false;
    };
    let mut at = value;
    for seg in parents {
        let next = match (seg, at) {
            (Segment::Key(k), Value::Mapping(m)) => m.get_mut(*k),
            (Segment::Index(i), Value::Sequence(s)) => s.get_mut(*i),
            _ => None,
        };
        match next {
            Some(v) => at = v,
            None => return false,
        }
    }
    match at {
        Value::Mapping(m) => m.remove(*last).is_some(),
        _ => false,
    }
}

/// The line (0-based, within the document) of the field at `path` in block-style YAML, or
/// of the deepest part of the path found (flow style `{…}` shows only where it starts).
fn field_line(doc: &str, path: &str) -> Option<usize> {
    let lines: Vec<(usize, usize, &str)> = doc
        .lines()
        .enumerate()
        .filter_map(|(n, l)| {
            let content = l.trim_start();
            (!content.is_empty() && !content.starts_with('#'))
                .then(|| (n, l.len() - content.len(), content))
        })
        .collect();
    // Position in `lines`, and the indentation the block's own keys are deeper than.
    let (mut pos, mut parent): (usize, Option<usize>) = (0, None);
    let mut found = None;
    let mut first = true;
    for seg in segments(path) {
        let inside = |&(_, indent, _): &(usize, usize, &str)| parent.is_none_or(|p| indent > p);
        let start = if first { 0 } else { pos + 1 };
        first = false;
        match seg {
            Segment::Key(key) => {
                let wanted = format!("{key}:");
                // The key may follow the `- ` that opened a list item on this very line.
                let same_line = found.is_some()
                    && lines.get(pos).is_some_and(|(_, _, c)| {
                        c.strip_prefix("- ").is_some_and(|r| r.starts_with(&wanted))
                    });
                if same_line {
                    let (_, indent, _) = lines[pos];
                    parent = Some(indent + 1);
                    continue;
                }
                let Some(hit) = lines[start.min(lines.len())..]
                    .iter()
                    .take_while(|l| inside(l))
                    .position(|(_, _, c)| c.starts_with(&wanted))
                else {
                    return found;
                };
                pos = start + hit;
                parent = Some(lines[pos].1);
                found = Some(lines[pos].0);
            }
            Segment::Index(i) => {
                let dash = |n: &usize| lines[*n].2 == "-" || lines[*n].2.starts_with("- ");
                // Items may stand at their key's own indentation (`entries:` / `- a`).
                let block: Vec<usize> = (start..lines.len())
                    .take_while(|&n| inside(&lines[n]) || (dash(&n) && Some(lines[n].1) == parent))
                    .filter(dash)
                    .collect();
                // The list's own items, not those of lists nested in them.
                let depth = block.first().map(|&n| lines[n].1);
                let items: Vec<usize> = block
                    .into_iter()
                    .filter(|&n| Some(lines[n].1) == depth)
                    .collect();
                let Some(&item) = items.get(i) else {
                    return found;
                };
                pos = item;
                parent = Some(lines[item].1);
                found = Some(lines[item].0);
            }
        }
    }
    found
}

/// Deserialize with the failing field's path, and collect fields the type does not know.
fn typed<T: DeserializeOwned>(value: &Value) -> Result<(T, Vec<String>), (Option<String>, String)> {
    let mut unknown = Vec::new();
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(value, &mut track);
    let result: Result<T, _> =
        serde_ignored::deserialize(de, |path| unknown.push(path.to_string()));
    match result {
        // kube's resource types read apiVersion and kind themselves.
        Ok(t) => Ok((
            t,
            unknown
                .into_iter()
                .filter(|p| p != "apiVersion" && p != "kind")
                .collect(),
        )),
        Err(e) => {
            let path = track.path().to_string();
            Err(((path != ".").then_some(path), plain_message(&e.to_string())))
        }
    }
}

/// The deserializer's words for a scalar where one of fixed strings belongs, said plainly:
/// YAML reads an unquoted `1.2` as a number and `yes` as a boolean.
fn plain_message(message: &str) -> String {
    match message.strip_suffix(", expected a Value::Tagged enum") {
        Some(found) => format!(
            "{}, expected one of the allowed strings: put the value in quotes (YAML reads an \
             unquoted 1.2 as a number)",
            found.replace("invalid type: floating point", "invalid type: the number")
        ),
        None => message.to_string(),
    }
}

/// Kubernetes object names: lowercase alphanumerics, `-` and `.`, starting and ending with
/// an alphanumeric.
fn check_name(name: &str, max: usize) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else if name.is_empty() {
        Err("is required".into())
    } else {
        Err(format!(
            "'{}' is not a valid name (lowercase letters, digits, '-' and '.', at most {max})",
            display_raw(name)
        ))
    }
}

#[cfg(test)]
mod field_tests {
    use super::*;

    const DOC: &str = "apiVersion: mailtls.io/v1alpha1
kind: OutboundGateway
metadata:
  name: g
spec:
  host: relay.example
  # a comment
  port: many
  tls:
    require: sometimes
  addressLists:
    - name: a
    - name: b
      extra:
        - x
        - y
";

    #[test]
    fn fields_are_found_on_their_own_line() {
        let line = |p: &str| field_line(DOC, p).map(|n| n + 1);
        assert_eq!(line("metadata.name"), Some(4));
        assert_eq!(line("spec.port"), Some(8));
        assert_eq!(line("spec.tls.require"), Some(10));
        assert_eq!(line("spec.addressLists[1].name"), Some(13));
        assert_eq!(line("spec.addressLists[1].extra[1]"), Some(16));
        // Not there: the deepest part that is.
        assert_eq!(line("spec.tls.missing"), Some(9));
        // Items at their key's own indentation, as kubectl writes them.
        let indentless = "spec:\n  entries:\n  - a\n  # b\n  - c\n  bulk: x\n";
        assert_eq!(
            field_line(indentless, "spec.entries[1]").map(|n| n + 1),
            Some(5)
        );
        assert_eq!(
            field_line(indentless, "spec.entries[2]").map(|n| n + 1),
            Some(2)
        );
        let flow = "kind: X\nspec: {port: many, host: h}\n";
        assert_eq!(field_line(flow, "spec.port").map(|n| n + 1), Some(2));
    }

    /// The JSON fast path reads what the YAML parser reads, and leaves what JSON refuses
    /// (duplicate keys here) to the YAML parser and its located error.
    #[test]
    fn json_documents_read_as_yaml_reads_them() {
        let doc = r#"{"apiVersion": "mailtls.io/v1alpha1", "kind": "AddressList",
            "metadata": {"name": "x", "labels": {"a": "1"}},
            "spec": {"entries": ["a.example", ".b.example", "x@c.example"], "n": 1.2, "ok": true, "none": null}}"#;
        let fast = parse(doc).expect("json");
        let yaml: Value = serde_norway::from_str(doc).expect("yaml");
        assert_eq!(fast, yaml);
        let dup = "{\"kind\": \"AddressList\",\n \"kind\": \"TlsCompliance\"}";
        assert!(serde_json::from_str::<Value>(dup).is_err());
        let err = parse(dup).expect_err("duplicate key");
        assert!(
            err.location().is_some() && err.to_string().contains("duplicate entry"),
            "{err}"
        );
        // Not JSON (unquoted keys): the YAML parser reads it.
        assert!(parse("{kind: AddressList}").is_ok());
    }

    #[test]
    fn every_type_error_is_reported_not_only_the_first() {
        let value: Value = serde_norway::from_str(DOC).expect("yaml");
        let problems = typed_all::<OutboundGateway>(value).expect_err("errors");
        let fields: Vec<&str> = problems.iter().filter_map(|(f, _)| f.as_deref()).collect();
        assert_eq!(fields, ["spec.port", "spec.tls.require"], "{problems:?}");
    }

    /// A JSON `kind: List` is taken apart into its items, each parsed on its own; it reads
    /// exactly as the same list does through the YAML parser, which reads it whole: the
    /// same resources, the same errors on the list's line, the same items passed over.
    #[test]
    fn a_json_list_reads_as_the_whole_list_reads() {
        let items = [
            r#"{"apiVersion": "mailtls.io/v1alpha1", "kind": "AddressList", "metadata": {"name": "a"}, "spec": {"entries": ["x.example", "Y@X.example"]}}"#,
            r#"{"apiVersion": "mailtls.io/v1alpha1", "kind": "AddressList", "metadata": {"name": "b"}, "spec": {"entries": ["x.example", 5]}}"#,
            r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}"#,
            r#"["not", "a", "mapping"]"#,
            "null",
            r#"{"apiVersion": "mailtls.io/v1alpha1", "kind": "TlsCompliance", "metadata": {"name": "p"}, "spec": {"direction": "Outbound", "addressLists": [{"name": "a"}]}}"#,
        ];
        let json = format!(
            "{{\"apiVersion\": \"v1\", \"kind\": \"List\", \"items\": [\n{}\n]}}\n",
            items.join(",\n")
        );
        // Taken apart: one document per item.
        assert_eq!(
            json_list_items(Document {
                source: Source {
                    file: "l.json".into(),
                    line: 1
                },
                text: &json,
                list_item: false,
            })
            .len(),
            items.len()
        );
        // A comment first: not JSON, so the YAML parser reads the list whole.
        let yaml = format!("# the same list\n{json}");
        let read = |text: &str| {
            let (loaded, errors) = load_str("l.json", text, "ns");
            (format!("{:?}", loaded.namespaces), loaded.skipped, errors)
        };
        let (split, whole) = (read(&json), read(&yaml));
        assert_eq!(split, whole);
        let (namespaces, skipped, errors) = split;
        assert!(namespaces.contains("Y@X.example"), "{namespaces}");
        assert_eq!(skipped, ["l.json:1 ConfigMap"]);
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_deref()).collect();
        assert_eq!(fields, [Some("spec.entries[1]"), None], "{errors:#?}");
    }

    /// Documents are parsed several at once; every error still comes with its own line,
    /// in the order of the file, and later documents see earlier ones (a name defined twice).
    #[test]
    fn errors_of_documents_parsed_at_once_keep_their_lines_and_order() {
        let list = "apiVersion: mailtls.io/v1alpha1\nkind: AddressList\nmetadata:\n  name: a\nspec:\n  entries: [x.example]\n";
        let deep = format!("apiVersion: v1\nkind: X\ndata: {}\n", "[".repeat(70));
        let docs = [
            list.to_string(),                           // lines 1-6
            "kind: [unclosed\n".to_string(),            // line 8, found at its end (9)
            deep,                                       // lines 10-12, deep on 12
            list.replace("x.example", "y.example"),     // lines 14-19, defined twice
            "apiVersion: v1\nkind: ConfigMap\n".into(), // skipped
        ];
        let text = docs.join("---\n");
        let (loaded, errors) = load_str("all.yaml", &text, "ns");
        let lines: Vec<usize> = errors
            .iter()
            .map(|e| e.source.as_ref().map_or(0, |s| s.line))
            .collect();
        assert_eq!(lines, [9, 12, 14], "{errors:#?}");
        assert!(
            errors[0].message.starts_with("not valid YAML"),
            "{}",
            errors[0]
        );
        assert!(errors[1].message.contains("nested deeper"), "{}", errors[1]);
        assert!(errors[2].message.contains("defined twice"), "{}", errors[2]);
        assert_eq!(loaded.namespaces["ns"].address_lists.len(), 1);
        assert_eq!(loaded.skipped, ["all.yaml:21 ConfigMap"]);

        // The same with Windows line ends, and no line end after the last document: the
        // documents are slices of the file as written, and read alike.
        let crlf = text.trim_end().replace('\n', "\r\n");
        let (loaded, errors) = load_str("all.yaml", &crlf, "ns");
        let crlf_lines: Vec<usize> = errors
            .iter()
            .map(|e| e.source.as_ref().map_or(0, |s| s.line))
            .collect();
        assert_eq!(crlf_lines, lines, "{errors:#?}");
        assert_eq!(loaded.namespaces["ns"].address_lists.len(), 1);
        assert_eq!(loaded.skipped, ["all.yaml:21 ConfigMap"]);
    }
}
