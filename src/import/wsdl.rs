//! `ficus import wsdl`: a WSDL 1.1 description (SOAP 1.1 or 1.2 binding, document/literal
//! wrapped) becomes one route and one transform per operation, printed as a complete config
//! that `ficus check` accepts.
//!
//! The request is the operation element's content as JSON, wrapped with `soap_wrap` (the
//! binding's SOAP version and action, the element's name and namespace, the `xs:sequence`
//! order); the answer is unwrapped with `soap_unwrap`, with `array_paths` from `maxOccurs` and
//! `convert` ops from the XSD simple types. What the transform config cannot express is said in
//! a comment above the route, never dropped silently.
//!
//! Schemas: the WSDL's inline `types`, plus `xs:import` / `xs:include` of local files, read
//! relative to the including file and refused when they leave the WSDL's directory; a
//! `schemaLocation` that is a URL is never fetched (its types are reported as unknown).
//!
//! Hostile or unusual schemas: each file read is capped at [`MAX_FILE_BYTES`] (a larger one is
//! an error naming it, exit 1). The walk from an operation's elements through types, element
//! references and groups is bounded three ways, and each bound maps what it has and says what
//! was cut in the route's `# Not mapped:` comment, so the output is still a config `ficus check`
//! accepts: a named type, element or group met again inside itself is not expanded a second
//! time (it "contains itself"); the walk never nests deeper than [`MAX_WALK_DEPTH`]; and one
//! operation maps at most [`MAX_FIELDS`] elements in [`MAX_STEPS`] steps, so a wide schema that
//! multiplies out (8 fields a level, 30 levels) stops early instead of expanding forever.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

const WSDL_NS: &str = "http://schemas.xmlsoap.org/wsdl/";
const SOAP11_BINDING_NS: &str = "http://schemas.xmlsoap.org/wsdl/soap/";
const SOAP12_BINDING_NS: &str = "http://schemas.xmlsoap.org/wsdl/soap12/";
const XSD_NS: &str = "http://www.w3.org/2001/XMLSchema";
const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";

/// Nesting beyond which a document (or a type expansion) is refused: a guard against
/// pathological input, far deeper than any real service.
const MAX_DEPTH: usize = 64;

/// A WSDL or schema file larger than this is refused: real ones are a few hundred KiB.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// How deep the walk through schema components (elements, types, groups, sequences, ...)
/// goes; about six components make one level of nested elements. Deeper content is untyped.
pub const MAX_WALK_DEPTH: usize = 256;

/// Elements mapped for one operation (request and answer together); the rest is left out.
pub const MAX_FIELDS: usize = 5_000;

/// Schema components visited for one operation: bounds the work of schemas that map few
/// elements but visit many components (groups of groups of empty groups).
pub const MAX_STEPS: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum WsdlError {
    #[error("{file}: cannot read it: {source}")]
    Read { file: PathBuf, source: std::io::Error },
    #[error("{file}: larger than {} MiB: refused (real WSDL files are far smaller)", MAX_FILE_BYTES / (1024 * 1024))]
    TooLarge { file: PathBuf },
    #[error("{file}: not well-formed XML: {reason}")]
    Xml { file: PathBuf, reason: String },
    #[error(
        "{file}: not a WSDL 1.1 document: the root element is `{found}`, not `definitions` in {WSDL_NS}"
    )]
    NotWsdl { file: PathBuf, found: String },
    #[error("{file}: {reason}")]
    Invalid { file: PathBuf, reason: String },
    #[error("{file}: schema `{location}`: {reason}")]
    Schema {
        file: PathBuf,
        location: String,
        reason: String,
    },
    #[error("{file}: no SOAP 1.1 or 1.2 binding: nothing to import")]
    NoSoapBinding { file: PathBuf },
    #[error("{file}: no operation named `{name}` in the SOAP binding (it has: {known})")]
    UnknownOperation {
        file: PathBuf,
        name: String,
        known: String,
    },
}

/// The command line's choices.
#[derive(Debug, Clone)]
pub struct Options {
    /// Only these operations (all when empty).
    pub operations: Vec<String>,
    /// Each route's path is `{prefix}/{OperationName}`.
    pub prefix: String,
    /// The upstream every route goes to.
    pub upstream: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            operations: Vec::new(),
            prefix: "/api".into(),
            upstream: "legacy".into(),
        }
    }
}

/// Reads `path` (and the local schemas it imports) and returns the config text.
pub fn import_file(path: &Path, opts: &Options) -> Result<String, WsdlError> {
    let text = read_capped(path).map_err(|e| match e {
        Capped::Io(source) => WsdlError::Read {
            file: path.to_path_buf(),
            source,
        },
        Capped::TooLarge => WsdlError::TooLarge {
            file: path.to_path_buf(),
        },
    })?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let dir = if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    };
    import_text(&text, path, Some(&dir), opts)
}

enum Capped {
    Io(std::io::Error),
    TooLarge,
}

/// The file's text, refused past [`MAX_FILE_BYTES`]. The read itself stops there too: the
/// size on disk says nothing for a pipe or a device (`/dev/zero`).
fn read_capped(path: &Path) -> Result<String, Capped> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(Capped::Io)?;
    if file.metadata().map_err(Capped::Io)?.len() > MAX_FILE_BYTES {
        return Err(Capped::TooLarge);
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(Capped::Io)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(Capped::TooLarge);
    }
    String::from_utf8(bytes).map_err(|_| {
        Capped::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        ))
    })
}

/// `file` names the document in messages; `dir` is where its local schemas are (`None`: the
/// document came from elsewhere, and schema files are not read).
pub fn import_text(text: &str, file: &Path, dir: Option<&Path>, opts: &Options) -> Result<String, WsdlError> {
    let root = parse_xml(text).map_err(|reason| WsdlError::Xml {
        file: file.to_path_buf(),
        reason,
    })?;
    if !root.is(WSDL_NS, "definitions") {
        let found = if root.ns.is_empty() {
            root.name.clone()
        } else {
            format!("{{{}}}{}", root.ns, root.name)
        };
        return Err(WsdlError::NotWsdl {
            file: file.to_path_buf(),
            found,
        });
    }
    let mut schemas = Schemas::new(dir);
    if let Some(types) = root.kid(WSDL_NS, "types") {
        for s in types.kids(XSD_NS, "schema") {
            schemas.add(s, file, None, 0)?;
        }
    }
    let wsdl = Wsdl::read(&root, file)?;
    let ops = wsdl.operations(&schemas, file)?;
    let chosen: Vec<&Operation> = if opts.operations.is_empty() {
        ops.iter().collect()
    } else {
        let mut out = Vec::new();
        for want in &opts.operations {
            match ops.iter().find(|o| &o.name == want) {
                Some(o) => out.push(o),
                None => {
                    return Err(WsdlError::UnknownOperation {
                        file: file.to_path_buf(),
                        name: want.clone(),
                        known: ops.iter().map(|o| o.name.as_str()).collect::<Vec<_>>().join(", "),
                    })
                }
            }
        }
        out
    };
    let mut global = wsdl.notes.clone();
    global.extend(schemas.notes.iter().cloned());
    Ok(render(file, &wsdl, &chosen, &global, opts))
}

// ---------------------------------------------------------------- a small namespace-aware tree

/// `prefix -> namespace` in scope at an element (`""`: the default namespace).
type Scope = Rc<BTreeMap<String, String>>;

#[derive(Debug)]
struct Node {
    ns: String,
    name: String,
    attrs: Vec<(String, String)>,
    scope: Scope,
    children: Vec<Rc<Node>>,
}

/// A namespace and a local name.
type QName = (String, String);

impl Node {
    fn is(&self, ns: &str, name: &str) -> bool {
        self.ns == ns && self.name == name
    }
    fn attr(&self, k: &str) -> Option<&str> {
        self.attrs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }
    fn kids<'a>(&'a self, ns: &'a str, name: &'a str) -> impl Iterator<Item = &'a Rc<Node>> + 'a {
        self.children.iter().filter(move |c| c.is(ns, name))
    }
    fn kid(&self, ns: &str, name: &str) -> Option<&Rc<Node>> {
        self.children.iter().find(|c| c.is(ns, name))
    }
    /// An attribute holding a QName (`tns:Order`), resolved in this element's scope.
    fn qname(&self, k: &str) -> Result<Option<QName>, String> {
        let Some(v) = self.attr(k) else {
            return Ok(None);
        };
        let (prefix, local) = v.trim().split_once(':').unwrap_or(("", v.trim()));
        let ns = match (prefix, self.scope.get(prefix)) {
            ("xml", _) => XML_NS.to_string(),
            (_, Some(u)) => u.clone(),
            ("", None) => String::new(),
            (p, None) => {
                return Err(format!(
                    "`{k}=\"{v}\"` on <{}>: the prefix `{p}` is not declared",
                    self.name
                ))
            }
        };
        Ok(Some((ns, local.to_string())))
    }
}

struct Open {
    prefix: String,
    name: String,
    attrs: Vec<(String, String)>,
    scope: Scope,
    children: Vec<Rc<Node>>,
}

fn open(s: &BytesStart<'_>, parent: Option<&Scope>) -> Result<Open, String> {
    let raw = std::str::from_utf8(s.name().as_ref())
        .map_err(|_| "an element name is not UTF-8".to_string())?
        .to_string();
    let (prefix, name) = match raw.split_once(':') {
        Some((p, l)) => (p.to_string(), l.to_string()),
        None => (String::new(), raw),
    };
    let mut attrs = Vec::new();
    let mut declared: Vec<(String, String)> = Vec::new();
    for a in s.attributes() {
        let a = a.map_err(|e| e.to_string())?;
        let key = std::str::from_utf8(a.key.as_ref())
            .map_err(|_| "an attribute name is not UTF-8".to_string())?
            .to_string();
        let value = a.unescape_value().map_err(|e| e.to_string())?.into_owned();
        if key == "xmlns" {
            declared.push((String::new(), value));
        } else if let Some(p) = key.strip_prefix("xmlns:") {
            declared.push((p.to_string(), value));
        } else {
            attrs.push((key, value));
        }
    }
    let scope = match (parent, declared.is_empty()) {
        (Some(p), true) => p.clone(),
        (p, _) => {
            let mut m = p.map(|p| (**p).clone()).unwrap_or_default();
            m.extend(declared);
            Rc::new(m)
        }
    };
    Ok(Open {
        prefix,
        name,
        attrs,
        scope,
        children: Vec::new(),
    })
}

fn close(o: Open) -> Result<Rc<Node>, String> {
    let ns = match (o.prefix.as_str(), o.scope.get(&o.prefix)) {
        ("xml", _) => XML_NS.to_string(),
        (_, Some(u)) => u.clone(),
        ("", None) => String::new(),
        (p, None) => return Err(format!("<{p}:{}>: the prefix `{p}` is not declared", o.name)),
    };
    // Attributes keep their written names; the ones this importer reads are unprefixed.
    Ok(Rc::new(Node {
        ns,
        name: o.name,
        attrs: o.attrs,
        scope: o.scope,
        children: o.children,
    }))
}

/// Elements only: text, comments and processing instructions carry nothing this importer uses.
fn parse_xml(text: &str) -> Result<Rc<Node>, String> {
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<Open> = Vec::new();
    let mut root: Option<Rc<Node>> = None;
    loop {
        let ev = reader
            .read_event()
            .map_err(|e| format!("at byte {}: {e}", reader.error_position()))?;
        let done = match ev {
            Event::Start(s) | Event::Empty(s) if root.is_some() && stack.is_empty() => {
                let _ = s;
                return Err("content after the root element".into());
            }
            Event::Start(s) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(format!("nested deeper than {MAX_DEPTH} elements"));
                }
                let o = open(&s, stack.last().map(|o| &o.scope))?;
                stack.push(o);
                None
            }
            Event::Empty(s) => Some(close(open(&s, stack.last().map(|o| &o.scope))?)?),
            Event::End(_) => match stack.pop() {
                Some(o) => Some(close(o)?),
                None => return Err("unbalanced end tag".into()),
            },
            Event::DocType(_) => return Err("DOCTYPE declarations are refused".into()),
            Event::Eof => break,
            _ => None,
        };
        if let Some(node) = done {
            match stack.last_mut() {
                Some(parent) => parent.children.push(node),
                None => root = Some(node),
            }
        }
    }
    if !stack.is_empty() {
        return Err("the document ends inside an element".into());
    }
    root.ok_or_else(|| "no root element".into())
}

// ---------------------------------------------------------------- schemas

/// Where a schema component was declared.
#[derive(Debug, Clone)]
struct Ctx {
    tns: String,
    /// `elementFormDefault="qualified"`: local elements are in the target namespace.
    qualified: bool,
}

struct Schemas {
    elements: HashMap<QName, (Rc<Node>, Ctx)>,
    types: HashMap<QName, (Rc<Node>, Ctx)>,
    groups: HashMap<QName, (Rc<Node>, Ctx)>,
    /// The WSDL's directory, canonical: schema files must be inside it. `None`: none are read.
    root_dir: Option<PathBuf>,
    loaded: HashSet<PathBuf>,
    notes: Vec<String>,
}

impl Schemas {
    fn new(dir: Option<&Path>) -> Self {
        Self {
            elements: HashMap::new(),
            types: HashMap::new(),
            groups: HashMap::new(),
            root_dir: dir.and_then(|d| d.canonicalize().ok()),
            loaded: HashSet::new(),
            notes: Vec::new(),
        }
    }

    /// `chameleon`: the includer's target namespace, for an included schema that has none.
    /// `depth`: how many includes/imports led here; a chain of distinct files recurses too.
    fn add(
        &mut self,
        schema: &Node,
        file: &Path,
        chameleon: Option<&str>,
        depth: usize,
    ) -> Result<(), WsdlError> {
        let tns = schema
            .attr("targetNamespace")
            .map(str::to_string)
            .or(chameleon.map(str::to_string))
            .unwrap_or_default();
        let ctx = Ctx {
            tns: tns.clone(),
            qualified: schema.attr("elementFormDefault") == Some("qualified"),
        };
        for c in &schema.children {
            if c.ns != XSD_NS {
                continue;
            }
            let name = c.attr("name").map(str::to_string);
            match (c.name.as_str(), name) {
                ("element", Some(n)) => {
                    self.elements.insert((tns.clone(), n), (c.clone(), ctx.clone()));
                }
                ("complexType" | "simpleType", Some(n)) => {
                    self.types.insert((tns.clone(), n), (c.clone(), ctx.clone()));
                }
                ("group", Some(n)) => {
                    self.groups.insert((tns.clone(), n), (c.clone(), ctx.clone()));
                }
                ("import" | "include", _) => {
                    let Some(loc) = c.attr("schemaLocation") else {
                        // An import without a location names a namespace another inline schema
                        // (or nothing) provides.
                        continue;
                    };
                    let include = c.name == "include";
                    self.load(loc, file, include.then_some(tns.as_str()), depth + 1)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn load(
        &mut self,
        loc: &str,
        from: &Path,
        chameleon: Option<&str>,
        depth: usize,
    ) -> Result<(), WsdlError> {
        let err = |reason: String| WsdlError::Schema {
            file: from.to_path_buf(),
            location: loc.to_string(),
            reason,
        };
        if depth > MAX_DEPTH {
            return Err(err(format!(
                "schemas import or include each other more than {MAX_DEPTH} files deep: refused"
            )));
        }
        if loc.contains("://") {
            self.notes.push(format!(
                "schema `{loc}` is a URL: it is not fetched, so the types it declares are unknown (mapped as strings)"
            ));
            return Ok(());
        }
        let Some(root) = self.root_dir.clone() else {
            self.notes.push(format!(
                "schema `{loc}` was not read (the WSDL was not read from a file): the types it declares are unknown (mapped as strings)"
            ));
            return Ok(());
        };
        if Path::new(loc).is_absolute() {
            return Err(err(
                "an absolute path; only files next to the WSDL (or below it) are read".into(),
            ));
        }
        let base = from.parent().unwrap_or(Path::new("."));
        let path = base.join(loc);
        let canonical = path
            .canonicalize()
            .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
        if !canonical.starts_with(&root) {
            return Err(err(format!(
                "{} is outside the WSDL's directory {}; only files next to the WSDL (or below it) are read",
                canonical.display(),
                root.display()
            )));
        }
        if !self.loaded.insert(canonical.clone()) {
            return Ok(());
        }
        let text = read_capped(&canonical).map_err(|e| match e {
            Capped::Io(e) => err(format!("cannot read it: {e}")),
            Capped::TooLarge => err(format!(
                "{} is larger than {} MiB: refused",
                canonical.display(),
                MAX_FILE_BYTES / (1024 * 1024)
            )),
        })?;
        let node = parse_xml(&text).map_err(|r| err(format!("not well-formed XML: {r}")))?;
        if !node.is(XSD_NS, "schema") {
            return Err(err(format!("its root element is `{}`, not xs:schema", node.name)));
        }
        self.add(&node, &path, chameleon, depth)
    }
}

// ---------------------------------------------------------------- the JSON shape of a type

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scalar {
    Number,
    Bool,
    DateTime,
    Text,
}

#[derive(Debug, Clone)]
struct Field {
    name: String,
    /// `maxOccurs` above 1 (or unbounded): always a JSON array.
    many: bool,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Scalar(Scalar),
    Complex(Vec<Field>),
}

/// What the cycle stack holds: a named component being expanded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Named {
    Type,
    Element,
    Group,
}

/// Walks type definitions into [`Field`]s, collecting what cannot be carried.
struct Walk<'a> {
    s: &'a Schemas,
    notes: Vec<String>,
    noted: HashSet<String>,
    /// Each `xs:sequence`'s element names, in order: the `order` soap_wrap needs.
    sequences: Vec<Vec<String>>,
    /// Named types, global elements and groups being expanded, to stop at one that contains
    /// itself.
    stack: Vec<(Named, QName)>,
    /// Each element met and the namespace it belongs in (`""`: none, an unqualified local
    /// element): soap_wrap writes all of them in the operation element's namespace.
    element_ns: Vec<(String, String)>,
    /// Guarded calls currently open: see [`Walk::guarded`].
    depth: usize,
    /// Guarded calls made, and elements mapped, for this operation.
    steps: usize,
    fields: usize,
    /// A cap was hit: nothing more is walked for this operation.
    cut: bool,
}

fn builtin(local: &str) -> Scalar {
    match local {
        "int" | "integer" | "long" | "short" | "byte" | "nonNegativeInteger" | "positiveInteger"
        | "negativeInteger" | "nonPositiveInteger" | "unsignedLong" | "unsignedInt" | "unsignedShort"
        | "unsignedByte" | "decimal" | "double" | "float" => Scalar::Number,
        "boolean" => Scalar::Bool,
        "dateTime" => Scalar::DateTime,
        _ => Scalar::Text,
    }
}

fn occurs_many(n: &Node) -> bool {
    match n.attr("maxOccurs") {
        Some("unbounded") => true,
        Some(m) => m.trim().parse::<u64>().is_ok_and(|m| m > 1),
        None => false,
    }
}

impl<'a> Walk<'a> {
    fn new(s: &'a Schemas) -> Self {
        Self {
            s,
            notes: Vec::new(),
            noted: HashSet::new(),
            sequences: Vec::new(),
            stack: Vec::new(),
            element_ns: Vec::new(),
            depth: 0,
            steps: 0,
            fields: 0,
            cut: false,
        }
    }

    fn note(&mut self, n: String) {
        if self.noted.insert(n.clone()) {
            self.notes.push(n);
        }
    }

    /// Every recursive step of the walk goes through here, so one place bounds the stack
    /// depth and the work, whichever path (element, reference, type, group, extension)
    /// recurses. Past a bound `f` is not called and `fallback` stands in for what it would
    /// have mapped.
    fn guarded<T>(&mut self, owner: &str, fallback: T, f: impl FnOnce(&mut Self) -> T) -> T {
        if self.cut {
            return fallback;
        }
        self.steps += 1;
        if self.steps > MAX_STEPS {
            self.cut = true;
            self.note(format!(
                "the schema takes more than {MAX_STEPS} steps to expand: mapping stopped at `{owner}`; the elements after it are left out (untyped: no arrays, no conversions)"
            ));
            return fallback;
        }
        if self.depth >= MAX_WALK_DEPTH {
            self.note(format!(
                "`{owner}` is nested too deeply (more than {MAX_WALK_DEPTH} schema components): below it nothing is typed (no arrays, no conversions)"
            ));
            return fallback;
        }
        self.depth += 1;
        let out = f(self);
        self.depth -= 1;
        out
    }

    /// Expands the named component `q` with `f`, unless it is already being expanded: then
    /// the cycle is noted and `fallback` stands in for the inner occurrence.
    fn named<T>(&mut self, what: Named, q: &QName, fallback: T, f: impl FnOnce(&mut Self) -> T) -> T {
        let key = (what, q.clone());
        if self.stack.contains(&key) {
            let n = &q.1;
            self.note(match what {
                Named::Type => format!(
                    "the type `{n}` contains itself: below its first level nothing is typed (no arrays, no conversions)"
                ),
                Named::Element => format!(
                    "the element `{n}` contains itself: below its first level nothing is typed (no arrays, no conversions)"
                ),
                Named::Group => format!(
                    "the group `{n}` contains itself: its elements are typed at its first use only; inside itself they pass through untyped (no arrays, no conversions)"
                ),
            });
            return fallback;
        }
        self.stack.push(key);
        let out = f(self);
        self.stack.pop();
        out
    }

    /// A global element's content (the operation element's children for a wrapped operation).
    fn global_element(&mut self, q: &QName) -> Result<Vec<Field>, String> {
        let Some((el, ctx)) = self.s.elements.get(q).cloned() else {
            return Err(format!(
                "the element `{{{}}}{}` is not declared in the WSDL's schemas",
                q.0, q.1
            ));
        };
        let kind = self.named(Named::Element, q, Kind::Scalar(Scalar::Text), |w| {
            w.element_kind(&el, &ctx, &q.1)
        });
        Ok(match kind {
            Kind::Complex(f) => f,
            Kind::Scalar(_) => {
                if !self.cut {
                    self.note(format!(
                        "the operation element `{}` holds a plain value, not child elements: the JSON body is that value",
                        q.1
                    ));
                }
                Vec::new()
            }
        })
    }

    fn element(&mut self, el: &Node, ctx: &Ctx, owner: &str) -> Option<Field> {
        if self.cut {
            return None;
        }
        if self.fields >= MAX_FIELDS {
            self.cut = true;
            self.note(format!(
                "the schema expands to more than {MAX_FIELDS} elements: mapping stopped in `{owner}`; the elements after that point are left out (untyped: no arrays, no conversions)"
            ));
            return None;
        }
        // Not guarded itself: what recurses below an element is its kind, and that is.
        let f = self.element_at(el, ctx, owner);
        if f.is_some() {
            self.fields += 1;
        }
        f
    }

    fn element_at(&mut self, el: &Node, ctx: &Ctx, owner: &str) -> Option<Field> {
        let many = occurs_many(el);
        if let Ok(Some(r)) = el.qname("ref") {
            let Some((g, gctx)) = self.s.elements.get(&r).cloned() else {
                self.note(format!(
                    "`{owner}` refers to the element `{}`, which is not declared: it is left out",
                    r.1
                ));
                return None;
            };
            self.element_ns.push((r.1.clone(), r.0.clone()));
            let kind = self.named(Named::Element, &r, Kind::Scalar(Scalar::Text), |w| {
                w.element_kind(&g, &gctx, &r.1)
            });
            return Some(Field {
                name: r.1,
                many,
                kind,
            });
        }
        let name = el.attr("name")?.to_string();
        let local_form = el.attr("form").map_or(ctx.qualified, |f| f == "qualified");
        let ns = if local_form {
            ctx.tns.clone()
        } else {
            String::new()
        };
        self.element_ns.push((name.clone(), ns));
        if el.attr("nillable") == Some("true") {
            self.note(format!(
                "`{name}` is nillable: a nil value (xsi:nil) arrives as {{\"@nil\": \"true\"}}, not null"
            ));
        }
        let kind = self.element_kind(el, ctx, &name);
        Some(Field { name, many, kind })
    }

    fn element_kind(&mut self, el: &Node, ctx: &Ctx, name: &str) -> Kind {
        self.guarded(name, Kind::Scalar(Scalar::Text), |w| {
            w.element_kind_at(el, ctx, name)
        })
    }

    fn element_kind_at(&mut self, el: &Node, ctx: &Ctx, name: &str) -> Kind {
        match el.qname("type") {
            Ok(Some(t)) => return self.type_kind(&t, name),
            Err(e) => {
                self.note(e);
                return Kind::Scalar(Scalar::Text);
            }
            Ok(None) => {}
        }
        if let Some(ct) = el.kid(XSD_NS, "complexType") {
            return self.complex(ct, ctx, name);
        }
        if let Some(st) = el.kid(XSD_NS, "simpleType") {
            return Kind::Scalar(self.simple(st, name));
        }
        self.note(format!(
            "`{name}` has no type (xs:anyType): its content passes through untyped (no arrays, no conversions)"
        ));
        Kind::Scalar(Scalar::Text)
    }

    fn type_kind(&mut self, t: &QName, owner: &str) -> Kind {
        self.guarded(owner, Kind::Scalar(Scalar::Text), |w| w.type_kind_at(t, owner))
    }

    fn type_kind_at(&mut self, t: &QName, owner: &str) -> Kind {
        if t.0 == XSD_NS {
            if t.1 == "anyType" {
                self.note(format!(
                    "`{owner}` is xs:anyType: its content passes through untyped (no arrays, no conversions)"
                ));
            }
            return Kind::Scalar(builtin(&t.1));
        }
        let Some((node, ctx)) = self.s.types.get(t).cloned() else {
            self.note(format!(
                "the type `{}` of `{owner}` is not declared in the WSDL or its local schemas: mapped as a string",
                t.1
            ));
            return Kind::Scalar(Scalar::Text);
        };
        // Simple types go on the cycle stack too: `S` restricting `T` restricting `S` is a
        // loop as surely as a complex type that contains itself.
        self.named(Named::Type, t, Kind::Scalar(Scalar::Text), |w| {
            if node.name == "simpleType" {
                Kind::Scalar(w.simple(&node, owner))
            } else {
                w.complex(&node, &ctx, owner)
            }
        })
    }

    fn simple(&mut self, st: &Node, owner: &str) -> Scalar {
        self.guarded(owner, Scalar::Text, |w| w.simple_at(st, owner))
    }

    fn simple_at(&mut self, st: &Node, owner: &str) -> Scalar {
        if let Some(r) = st.kid(XSD_NS, "restriction") {
            if let Ok(Some(base)) = r.qname("base") {
                return match self.type_kind(&base, owner) {
                    Kind::Scalar(s) => s,
                    Kind::Complex(_) => Scalar::Text,
                };
            }
            if let Some(inner) = r.kid(XSD_NS, "simpleType") {
                return self.simple(inner, owner);
            }
        }
        // xs:list and xs:union stay text: a list is one space-separated string.
        Scalar::Text
    }

    fn complex(&mut self, ct: &Node, ctx: &Ctx, owner: &str) -> Kind {
        self.guarded(owner, Kind::Scalar(Scalar::Text), |w| {
            w.complex_at(ct, ctx, owner)
        })
    }

    fn complex_at(&mut self, ct: &Node, ctx: &Ctx, owner: &str) -> Kind {
        let mut fields = Vec::new();
        if ct.attr("mixed") == Some("true") {
            self.note(format!(
                "`{owner}` has mixed content: its text arrives as `#text` next to the child elements"
            ));
        }
        for c in ct.children.iter().filter(|c| c.ns == XSD_NS) {
            match c.name.as_str() {
                "sequence" | "all" | "choice" | "group" | "any" | "element" => {
                    self.particle(c, ctx, owner, &mut fields)
                }
                "attribute" | "attributeGroup" | "anyAttribute" => self.attribute(c, owner),
                "complexContent" => {
                    for d in c.children.iter().filter(|d| d.ns == XSD_NS) {
                        if d.name == "restriction" {
                            self.note(format!(
                                "`{owner}` restricts its base type: only the restriction's own elements are mapped"
                            ));
                        }
                        if d.name == "extension" {
                            match d.qname("base") {
                                Ok(Some(b)) => {
                                    if let Kind::Complex(base) = self.type_kind(&b, owner) {
                                        fields.extend(base);
                                    }
                                }
                                Ok(None) => {}
                                Err(e) => self.note(e),
                            }
                            self.note(format!(
                                "`{owner}` extends a base type: in the `order` list its own elements follow the base's, which ficus cannot guarantee when names repeat"
                            ));
                        }
                        for e in d.children.iter().filter(|e| e.ns == XSD_NS) {
                            match e.name.as_str() {
                                "attribute" | "attributeGroup" | "anyAttribute" => self.attribute(e, owner),
                                _ => self.particle(e, ctx, owner, &mut fields),
                            }
                        }
                    }
                }
                "simpleContent" => {
                    self.note(format!(
                        "`{owner}` is a value with attributes (simple content): with an attribute present the value is `#text` and is not converted"
                    ));
                    for d in c.children.iter() {
                        for e in d.children.iter().filter(|e| e.ns == XSD_NS) {
                            if matches!(e.name.as_str(), "attribute" | "attributeGroup" | "anyAttribute") {
                                self.attribute(e, owner);
                            }
                        }
                    }
                    return Kind::Scalar(Scalar::Text);
                }
                _ => {}
            }
        }
        Kind::Complex(fields)
    }

    fn attribute(&mut self, a: &Node, owner: &str) {
        let what = match (a.name.as_str(), a.attr("name"), a.attr("ref")) {
            ("anyAttribute", _, _) => "any attribute (xs:anyAttribute)".to_string(),
            ("attributeGroup", _, Some(r)) => format!("the attribute group `{r}`"),
            (_, Some(n), _) => format!("the attribute `{n}`"),
            (_, _, Some(r)) => format!("the attribute `{r}`"),
            _ => "an attribute".to_string(),
        };
        self.note(format!(
            "{what} of `{owner}`: carried as an `@name` key holding a string, never converted"
        ));
    }

    fn particle(&mut self, p: &Node, ctx: &Ctx, owner: &str, fields: &mut Vec<Field>) {
        self.guarded(owner, (), |w| w.particle_at(p, ctx, owner, fields))
    }

    fn particle_at(&mut self, p: &Node, ctx: &Ctx, owner: &str, fields: &mut Vec<Field>) {
        let many = occurs_many(p);
        let start = fields.len();
        match p.name.as_str() {
            "element" => {
                if let Some(f) = self.element(p, ctx, owner) {
                    fields.push(f);
                }
            }
            "sequence" | "all" => {
                // The slot is taken before the children are walked, so an outer sequence comes
                // before the ones nested in it and the merged `order` reads top-down.
                let slot = self.sequences.len();
                self.sequences.push(Vec::new());
                let mut names = Vec::new();
                for c in p.children.iter().filter(|c| c.ns == XSD_NS) {
                    let before = fields.len();
                    self.particle(c, ctx, owner, fields);
                    if c.name == "element" {
                        names.extend(fields[before..].iter().map(|f| f.name.clone()));
                    }
                }
                if p.name == "sequence" {
                    self.sequences[slot] = names;
                }
            }
            "choice" => {
                let alternatives: Vec<String> = p
                    .children
                    .iter()
                    .filter(|c| c.is(XSD_NS, "element"))
                    .filter_map(|c| c.attr("name").or(c.attr("ref")).map(str::to_string))
                    .collect();
                self.note(format!(
                    "xs:choice in `{owner}` ({}): every alternative is mapped as an optional element; ficus does not check that exactly one is sent",
                    if alternatives.is_empty() {
                        "groups".to_string()
                    } else {
                        alternatives.join(" | ")
                    }
                ));
                for c in p.children.iter().filter(|c| c.ns == XSD_NS) {
                    self.particle(c, ctx, owner, fields);
                }
            }
            "group" => match p.qname("ref") {
                Ok(Some(r)) => match self.s.groups.get(&r).cloned() {
                    Some((g, gctx)) => self.named(Named::Group, &r, (), |w| {
                        for c in g.children.iter().filter(|c| c.ns == XSD_NS) {
                            w.particle(c, &gctx, owner, fields);
                        }
                    }),
                    None => self.note(format!(
                        "`{owner}` uses the group `{}`, which is not declared: its elements are left out",
                        r.1
                    )),
                },
                Ok(None) => {}
                Err(e) => self.note(e),
            },
            "any" => self.note(format!(
                "xs:any in `{owner}`: whatever is sent there passes through untyped (no arrays, no conversions, no order)"
            )),
            _ => {}
        }
        if many {
            // A repeated sequence or choice repeats each of its elements.
            for f in &mut fields[start..] {
                f.many = true;
            }
        }
    }
}

/// One flat `order` list that respects every sequence, when there is one: soap_wrap applies the
/// same list at every level. `Err` names two elements that sequences order both ways.
fn merge_order(sequences: &[Vec<String>]) -> Result<Vec<String>, (String, String)> {
    // A sequence of one element orders nothing.
    let sequences: Vec<&Vec<String>> = sequences.iter().filter(|s| s.len() > 1).collect();
    // Indexed, not searched: a large schema has thousands of names.
    let mut names: Vec<String> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for s in &sequences {
        for n in s.iter() {
            if !index.contains_key(n.as_str()) {
                index.insert(n.as_str(), names.len());
                names.push(n.clone());
            }
        }
    }
    let idx = |n: &str| index.get(n).copied().unwrap_or(0);
    let mut after: Vec<HashSet<usize>> = vec![HashSet::new(); names.len()];
    let mut preds = vec![0usize; names.len()];
    for s in &sequences {
        for w in s.windows(2) {
            let (a, b) = (idx(&w[0]), idx(&w[1]));
            if a != b && after[a].insert(b) {
                preds[b] += 1;
            }
        }
    }
    // Kahn's algorithm, taking the earliest-seen ready name each time, so an unconstrained list
    // keeps the document's order.
    let mut out = Vec::new();
    let mut done = vec![false; names.len()];
    while out.len() < names.len() {
        let Some(next) = (0..names.len()).find(|&i| !done[i] && preds[i] == 0) else {
            let stuck: Vec<usize> = (0..names.len()).filter(|&i| !done[i]).collect();
            let a = stuck.first().copied().unwrap_or(0);
            let b = after[a].iter().copied().find(|b| !done[*b]).unwrap_or(a);
            return Err((names[a].clone(), names[b].clone()));
        };
        done[next] = true;
        for &b in &after[next] {
            preds[b] -= 1;
        }
        out.push(names[next].clone());
    }
    Ok(out)
}

// ---------------------------------------------------------------- the WSDL

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V11,
    V12,
}

impl Version {
    fn label(self) -> &'static str {
        match self {
            Version::V11 => "1.1",
            Version::V12 => "1.2",
        }
    }
    fn ns(self) -> &'static str {
        match self {
            Version::V11 => SOAP11_BINDING_NS,
            Version::V12 => SOAP12_BINDING_NS,
        }
    }
}

struct Binding {
    name: String,
    version: Version,
    node: Rc<Node>,
    port_type: Rc<Node>,
    /// The `soap:address` of a port that uses this binding.
    address: Option<String>,
}

struct Wsdl {
    tns: String,
    service: Option<String>,
    binding: Binding,
    messages: HashMap<QName, Rc<Node>>,
    notes: Vec<String>,
}

/// What the generated route and transform need to know of one operation.
struct Operation {
    name: String,
    action: Option<String>,
    input: Message,
    output: Option<Message>,
    notes: Vec<String>,
}

struct Message {
    element: String,
    namespace: Option<String>,
    fields: Vec<Field>,
    sequences: Vec<Vec<String>>,
}

impl Wsdl {
    fn read(root: &Node, file: &Path) -> Result<Self, WsdlError> {
        let invalid = |reason: String| WsdlError::Invalid {
            file: file.to_path_buf(),
            reason,
        };
        let tns = root.attr("targetNamespace").unwrap_or_default().to_string();
        let mut notes = Vec::new();
        let named = |kind: &str| -> HashMap<QName, Rc<Node>> {
            root.children
                .iter()
                .filter(|c| c.is(WSDL_NS, kind))
                .filter_map(|c| Some(((tns.clone(), c.attr("name")?.to_string()), c.clone())))
                .collect()
        };
        let messages = named("message");
        let port_types = named("portType");
        if root.kid(WSDL_NS, "import").is_some() {
            notes.push("wsdl:import is not followed: only this file's bindings are read".into());
        }
        let mut soap: Vec<Binding> = Vec::new();
        for b in root.kids(WSDL_NS, "binding") {
            let name = b.attr("name").unwrap_or_default().to_string();
            let version = if b.kid(SOAP11_BINDING_NS, "binding").is_some() {
                Version::V11
            } else if b.kid(SOAP12_BINDING_NS, "binding").is_some() {
                Version::V12
            } else {
                notes.push(format!(
                    "binding `{name}` is not a SOAP binding (HTTP GET/POST, ...): skipped"
                ));
                continue;
            };
            let pt = b
                .qname("type")
                .map_err(invalid)?
                .ok_or_else(|| invalid(format!("binding `{name}` has no `type`")))?;
            let port_type = port_types
                .get(&pt)
                .or_else(|| port_types.iter().find(|(k, _)| k.1 == pt.1).map(|(_, v)| v))
                .ok_or_else(|| {
                    invalid(format!(
                        "binding `{name}` names the portType `{}`, which is not declared",
                        pt.1
                    ))
                })?
                .clone();
            soap.push(Binding {
                name,
                version,
                node: b.clone(),
                port_type,
                address: None,
            });
        }
        let mut service = None;
        for s in root.kids(WSDL_NS, "service") {
            for port in s.kids(WSDL_NS, "port") {
                let Ok(Some(bq)) = port.qname("binding") else {
                    continue;
                };
                if let Some(b) = soap.iter_mut().find(|b| b.name == bq.1) {
                    let addr = port
                        .kid(b.version.ns(), "address")
                        .and_then(|a| a.attr("location"))
                        .map(str::to_string);
                    if b.address.is_none() {
                        b.address = addr;
                        service = service.or_else(|| s.attr("name").map(str::to_string));
                    }
                }
            }
        }
        if soap.is_empty() {
            return Err(WsdlError::NoSoapBinding {
                file: file.to_path_buf(),
            });
        }
        // A service often offers the same operations over SOAP 1.1 and 1.2: one binding is
        // imported (the first SOAP 1.1 one), and the others are named.
        let pick = soap.iter().position(|b| b.version == Version::V11).unwrap_or(0);
        let binding = soap.swap_remove(pick);
        for other in &soap {
            notes.push(format!(
                "binding `{}` (SOAP {}) is not imported: this config uses `{}` (SOAP {})",
                other.name,
                other.version.label(),
                binding.name,
                binding.version.label()
            ));
        }
        Ok(Self {
            tns,
            service,
            binding,
            messages,
            notes,
        })
    }

    fn operations(&self, schemas: &Schemas, file: &Path) -> Result<Vec<Operation>, WsdlError> {
        let invalid = |reason: String| WsdlError::Invalid {
            file: file.to_path_buf(),
            reason,
        };
        let soap_ns = self.binding.version.ns();
        let default_style = self
            .binding
            .node
            .kid(soap_ns, "binding")
            .and_then(|b| b.attr("style"))
            .unwrap_or("document")
            .to_string();
        let mut out = Vec::new();
        for bop in self.binding.node.kids(WSDL_NS, "operation") {
            let name = bop
                .attr("name")
                .ok_or_else(|| {
                    invalid(format!(
                        "an operation of binding `{}` has no name",
                        self.binding.name
                    ))
                })?
                .to_string();
            let soap_op = bop.kid(soap_ns, "operation");
            let action = soap_op
                .and_then(|o| o.attr("soapAction"))
                .filter(|a| !a.is_empty())
                .map(str::to_string);
            let style = soap_op
                .and_then(|o| o.attr("style"))
                .unwrap_or(&default_style)
                .to_string();
            let Some(pt_op) = self
                .binding
                .port_type
                .kids(WSDL_NS, "operation")
                .find(|o| o.attr("name") == Some(name.as_str()))
            else {
                return Err(invalid(format!(
                    "operation `{name}` of binding `{}` is not in its portType",
                    self.binding.name
                )));
            };
            let mut walk = Walk::new(schemas);
            let mut notes = Vec::new();
            let body_of = |dir: &str| {
                bop.kid(WSDL_NS, dir)
                    .and_then(|d| d.kid(soap_ns, "body"))
                    .cloned()
            };
            for dir in ["input", "output"] {
                if let Some(d) = bop.kid(WSDL_NS, dir) {
                    for h in d.kids(soap_ns, "header") {
                        notes.push(format!(
                            "the SOAP header `{}` ({dir}) is not carried: add it with a request `headers` op or in the backend",
                            h.attr("part").unwrap_or("?")
                        ));
                    }
                }
            }
            if bop.kids(WSDL_NS, "fault").next().is_some() {
                notes.push(
                    "declared faults become problem+json (`soap-fault`, 502; 400 for Client/Sender faults): map their codes with soap_unwrap.fault_status".into(),
                );
            }
            if [body_of("input"), body_of("output")]
                .iter()
                .flatten()
                .any(|b| b.attr("use") == Some("encoded"))
            {
                notes.push(format!(
                    "{style}/encoded: ficus writes literal XML, without xsi:type or SOAP encoding; a service that requires encoding will refuse these requests"
                ));
            }
            let msg_of = |dir: &str| -> Result<Option<Rc<Node>>, WsdlError> {
                let Some(d) = pt_op.kid(WSDL_NS, dir) else {
                    return Ok(None);
                };
                let q = d
                    .qname("message")
                    .map_err(invalid)?
                    .ok_or_else(|| invalid(format!("the {dir} of operation `{name}` names no message")))?;
                self.messages
                    .get(&q)
                    .or_else(|| self.messages.iter().find(|(k, _)| k.1 == q.1).map(|(_, v)| v))
                    .cloned()
                    .map(Some)
                    .ok_or_else(|| {
                        invalid(format!(
                            "operation `{name}` uses the message `{}`, which is not declared",
                            q.1
                        ))
                    })
            };
            let input_msg = msg_of("input")?.ok_or_else(|| {
                invalid(format!(
                    "operation `{name}` has no input (notification operations are not supported)"
                ))
            })?;
            let output_msg = msg_of("output")?;
            let ns_of = |dir: &str| body_of(dir).and_then(|b| b.attr("namespace").map(str::to_string));
            let input = self.message(
                &mut walk,
                &input_msg,
                (&name, "input", name.clone()),
                &style,
                ns_of("input"),
                file,
            )?;
            let elements_in = std::mem::take(&mut walk.element_ns);
            let output = match &output_msg {
                Some(m) => Some(self.message(
                    &mut walk,
                    m,
                    (&name, "output", format!("{name}Response")),
                    &style,
                    ns_of("output"),
                    file,
                )?),
                None => None,
            };
            if style == "rpc" {
                notes.insert(
                    0,
                    "rpc style: the operation element is named after the operation, and each part is a child element in no namespace; soap_wrap writes the parts in the operation's namespace".into(),
                );
            } else {
                let op_ns = input.namespace.clone().unwrap_or_default();
                let mut elsewhere: Vec<String> = Vec::new();
                let mut seen: HashSet<String> = HashSet::new();
                for (el, ns) in &elements_in {
                    let what = if ns.is_empty() {
                        format!("`{el}` (no namespace)")
                    } else {
                        format!("`{el}` ({ns})")
                    };
                    if *ns != op_ns && seen.insert(what.clone()) {
                        elsewhere.push(what);
                    }
                }
                if !elsewhere.is_empty() {
                    notes.insert(
                        0,
                        format!(
                            "namespaces: soap_wrap writes every request element in the operation's namespace ({op_ns}), but the schema puts {} elsewhere; a strict service refuses that",
                            elsewhere.join(", ")
                        ),
                    );
                }
            }
            notes.extend(walk.notes);
            out.push(Operation {
                name,
                action,
                input,
                output,
                notes,
            });
        }
        if out.is_empty() {
            return Err(invalid(format!(
                "binding `{}` has no operations",
                self.binding.name
            )));
        }
        Ok(out)
    }

    /// One message's body element and content. `what`: the operation's name, the direction,
    /// and the element an rpc-style body is named.
    fn message(
        &self,
        walk: &mut Walk<'_>,
        msg: &Node,
        what: (&str, &str, String),
        style: &str,
        ns_attr: Option<String>,
        file: &Path,
    ) -> Result<Message, WsdlError> {
        let (name, dir, wrapper) = what;
        let invalid = |reason: String| WsdlError::Invalid {
            file: file.to_path_buf(),
            reason,
        };
        walk.sequences.clear();
        let parts: Vec<&Rc<Node>> = msg.kids(WSDL_NS, "part").collect();
        if style == "rpc" {
            let mut fields = Vec::new();
            for p in &parts {
                let pname = p.attr("name").unwrap_or("part").to_string();
                let kind = match (
                    p.qname("type").map_err(invalid)?,
                    p.qname("element").map_err(invalid)?,
                ) {
                    (Some(t), _) => walk.type_kind(&t, &pname),
                    (None, Some(e)) => Kind::Complex(walk.global_element(&e).map_err(invalid)?),
                    (None, None) => Kind::Scalar(Scalar::Text),
                };
                fields.push(Field {
                    name: pname,
                    many: false,
                    kind,
                });
            }
            let names: Vec<String> = fields.iter().map(|f| f.name.clone()).collect();
            if names.len() > 1 {
                walk.sequences.push(names);
            }
            return Ok(Message {
                element: wrapper,
                namespace: ns_attr.or_else(|| Some(self.tns.clone())),
                fields,
                sequences: std::mem::take(&mut walk.sequences),
            });
        }
        if parts.len() > 1 {
            walk.note(format!(
                    "the {dir} message `{}` has {} parts: only the first (`{}`) is mapped (document/literal wrapped has one)",
                    msg.attr("name").unwrap_or("?"),
                    parts.len(),
                    parts[0].attr("name").unwrap_or("?")
                ));
        }
        let Some(part) = parts.first() else {
            return Ok(Message {
                element: wrapper,
                namespace: ns_attr,
                fields: Vec::new(),
                sequences: Vec::new(),
            });
        };
        match (
            part.qname("element").map_err(invalid)?,
            part.qname("type").map_err(invalid)?,
        ) {
            (Some(e), _) => {
                let fields = walk.global_element(&e).map_err(invalid)?;
                Ok(Message {
                    element: e.1,
                    namespace: (!e.0.is_empty()).then_some(e.0),
                    fields,
                    sequences: std::mem::take(&mut walk.sequences),
                })
            }
            (None, Some(t)) => {
                walk.note(format!(
                        "the {dir} part `{}` is a type, not an element (document/literal, not wrapped): the body element is named after the part",
                        part.attr("name").unwrap_or("?")
                    ));
                let pname = part.attr("name").unwrap_or("part").to_string();
                let fields = match walk.type_kind(&t, &pname) {
                    Kind::Complex(f) => f,
                    Kind::Scalar(_) => Vec::new(),
                };
                Ok(Message {
                    element: pname,
                    namespace: ns_attr,
                    fields,
                    sequences: std::mem::take(&mut walk.sequences),
                })
            }
            (None, None) => Err(invalid(format!(
                "the part `{}` of operation `{name}` has neither `element` nor `type`",
                part.attr("name").unwrap_or("?")
            ))),
        }
    }
}

// ---------------------------------------------------------------- output

/// A YAML single-quoted scalar: no escapes but `''`, so anything prints as written.
fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Text from the WSDL inside a YAML comment: a line break there would end the comment.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// `GetOrderStatus` -> `get-order-status`: route and transform names.
fn kebab(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_alphanumeric() {
            let boundary = c.is_ascii_uppercase()
                && i > 0
                && (chars[i - 1].is_ascii_lowercase()
                    || chars[i - 1].is_ascii_digit()
                    || (chars[i - 1].is_ascii_uppercase()
                        && chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase())));
            if boundary && !out.ends_with('-') {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_end_matches('-').to_string();
    if out.is_empty() {
        "operation".into()
    } else {
        out
    }
}

/// The response's JSON shape, as `array_paths` (element-name paths) and conversion ops (field
/// paths, `*` past each array).
#[derive(Default)]
struct Shape {
    array_paths: Vec<String>,
    ops: Vec<String>,
    datetimes: Vec<String>,
}

fn shape(fields: &[Field], elem_path: &str, json_path: &str, out: &mut Shape) {
    for f in fields {
        let ep = if elem_path.is_empty() {
            f.name.clone()
        } else {
            format!("{elem_path}.{}", f.name)
        };
        let base = if json_path.is_empty() {
            f.name.clone()
        } else {
            format!("{json_path}.{}", f.name)
        };
        let jp = if f.many {
            out.array_paths.push(ep.clone());
            format!("{base}.*")
        } else {
            base
        };
        match &f.kind {
            Kind::Scalar(Scalar::Number) => out
                .ops
                .push(format!("convert: {{ path: {}, to: number }}", q(&jp))),
            Kind::Scalar(Scalar::Bool) => out.ops.push(format!("convert: {{ path: {}, to: bool }}", q(&jp))),
            Kind::Scalar(Scalar::DateTime) => out.datetimes.push(jp),
            Kind::Scalar(Scalar::Text) => {}
            Kind::Complex(children) => shape(children, &ep, &jp, out),
        }
    }
}

fn url_parts(location: &str) -> Option<(String, String)> {
    let uri: http::Uri = location.parse().ok()?;
    let scheme = uri.scheme_str()?;
    let authority = uri.authority()?;
    let path = uri.path_and_query().map_or("/".to_string(), |p| p.to_string());
    Some((format!("{scheme}://{authority}"), path))
}

fn render(file: &Path, wsdl: &Wsdl, ops: &[&Operation], global: &[String], opts: &Options) -> String {
    let b = &wsdl.binding;
    let version = b.version;
    let (endpoint, path) = match b.address.as_deref().and_then(url_parts) {
        Some(p) => p,
        None => ("http://127.0.0.1:8081".to_string(), "/".to_string()),
    };
    let file_name = one_line(&file.file_name().map_or_else(
        || file.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    ));
    let mut y = String::new();
    let _ = writeln!(
        y,
        "# Generated by `ficus import wsdl {file_name}`: service {}, binding {} (SOAP {}), {} operation{}.",
        wsdl.service.as_deref().unwrap_or("(none)"),
        b.name,
        version.label(),
        ops.len(),
        if ops.len() == 1 { "" } else { "s" }
    );
    y.push_str(
        "# A complete config (`ficus check` accepts it as is); the listener, admin and upstream are\n\
         # placeholders. Paste the `transforms` and `routes` entries into your own config.\n\
         # Each route takes the operation element's content as JSON (POST, application/json) and\n\
         # answers with the response element's content as JSON: repeated elements are arrays,\n\
         # numbers and booleans are converted, everything else stays a string.\n",
    );
    for n in global {
        let _ = writeln!(y, "# Not mapped: {}", one_line(n));
    }
    y.push_str("listeners:\n  - name: public\n    bind: 127.0.0.1:8080\nadmin:\n  bind: 127.0.0.1:9901\n");
    let _ = writeln!(y, "upstreams:\n  {}:", opts.upstream);
    match b.address.as_deref() {
        Some(a) if url_parts(a).is_some() => {
            let _ = writeln!(y, "    # from the WSDL's soap:address {a}");
        }
        Some(a) => {
            let _ = writeln!(
                y,
                "    # the WSDL's soap:address `{}` is not an absolute URL: set the endpoint",
                one_line(a)
            );
        }
        None => y.push_str("    # the WSDL names no soap:address for this binding: set the endpoint\n"),
    }
    let _ = writeln!(y, "    endpoints: [{}]", q(&endpoint));
    // Names: kebab-case of the operation, made unique.
    let mut used: HashSet<String> = HashSet::new();
    let names: Vec<String> = ops
        .iter()
        .map(|o| {
            let base = kebab(&o.name);
            let mut n = base.clone();
            let mut i = 2;
            while !used.insert(n.clone()) {
                n = format!("{base}-{i}");
                i += 1;
            }
            n
        })
        .collect();
    let prefix = opts.prefix.trim_end_matches('/');
    let content_types = "[text/xml, application/soap+xml]";
    let mut routes = String::from("routes:\n");
    y.push_str("transforms:\n");
    for (o, name) in ops.iter().zip(&names) {
        let mut notes = o.notes.clone();
        let _ = writeln!(
            y,
            "  {name}:\n    request:\n      method: POST\n      path: {}",
            q(&path)
        );
        y.push_str("      body: {}   # a POST without a body is sent as an empty operation element\n");
        y.push_str("      ops:\n");
        let mut wrap = format!("        - soap_wrap: {{ version: {}, ", q(version.label()));
        if let Some(a) = &o.action {
            let _ = write!(wrap, "action: {}, ", q(a));
        }
        let _ = write!(wrap, "body_element: {}", q(&o.input.element));
        if let Some(ns) = &o.input.namespace {
            let _ = write!(wrap, ", namespace: {}", q(ns));
        }
        match merge_order(&o.input.sequences) {
            Ok(order) if order.len() > 1 => {
                let list: Vec<String> = order.iter().map(|n| q(n)).collect();
                let _ = write!(wrap, ", order: [{}]", list.join(", "));
            }
            Ok(_) => {}
            Err((a, b2)) => notes.push(format!(
                "element order: the request's sequences put `{a}` and `{b2}` in both orders, and soap_wrap has one `order` list for every level: elements are written in name order"
            )),
        }
        wrap.push_str(" }\n");
        y.push_str(&wrap);
        let _ = writeln!(
            y,
            "    response:\n      content_types: {content_types}\n      ops:"
        );
        let mut sh = Shape::default();
        if let Some(out) = &o.output {
            shape(&out.fields, "", "", &mut sh);
        }
        let mut unwrap = String::from("        - soap_unwrap: {");
        if !sh.array_paths.is_empty() {
            let list: Vec<String> = sh.array_paths.iter().map(|p| q(p)).collect();
            let _ = write!(unwrap, " array_paths: [{}] ", list.join(", "));
        }
        unwrap.push_str("}\n");
        y.push_str(&unwrap);
        for op in &sh.ops {
            let _ = writeln!(y, "        - {op}");
        }
        if !sh.datetimes.is_empty() {
            notes.push(format!(
                "xs:dateTime fields stay strings as the service writes them ({}); a `date` op can reformat them",
                sh.datetimes.join(", ")
            ));
        }
        if o.output.is_none() {
            notes.push("one-way operation: the service's answer (usually empty) is passed on".into());
        }
        let route_path = format!("{prefix}/{}", o.name);
        let _ = writeln!(
            routes,
            "  # {}: POST {route_path} -> SOAP {} {} on {path}",
            o.name,
            version.label(),
            o.input.element
        );
        for n in &notes {
            let _ = writeln!(routes, "  # Not mapped: {}", one_line(n));
        }
        let _ = writeln!(
            routes,
            "  - name: {name}\n    match: {{ path: {}, methods: [POST] }}\n    upstream: {}\n    transform: {name}",
            q(&route_path),
            opts.upstream
        );
    }
    y.push_str(&routes);
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = r#"<?xml version="1.0"?>
<definitions xmlns="http://schemas.xmlsoap.org/wsdl/" xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/"
  xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:tns="urn:t" targetNamespace="urn:t">"#;

    /// A one-operation WSDL around `schema` (which declares `Op` and `OpResponse`).
    fn wsdl(schema: &str, style: &str, body_use: &str) -> String {
        format!(
            r#"{HEAD}
  <types><xs:schema targetNamespace="urn:t" elementFormDefault="qualified">{schema}</xs:schema></types>
  <message name="In"><part name="p" element="tns:Op"/></message>
  <message name="Out"><part name="p" element="tns:OpResponse"/></message>
  <portType name="PT"><operation name="Op"><input message="tns:In"/><output message="tns:Out"/></operation></portType>
  <binding name="B" type="tns:PT"><soap:binding style="{style}" transport="http://schemas.xmlsoap.org/soap/http"/>
    <operation name="Op"><soap:operation soapAction="urn:t#Op"/>
      <input><soap:body use="{body_use}"/></input><output><soap:body use="{body_use}"/></output></operation></binding>
  <service name="S"><port name="P" binding="tns:B"><soap:address location="http://legacy.example:8080/svc/S.asmx"/></port></service>
</definitions>"#
        )
    }

    fn import(text: &str) -> Result<String, WsdlError> {
        import_text(text, Path::new("t.wsdl"), None, &Options::default())
    }

    #[test]
    fn a_wrapped_operation_becomes_soap_wrap_with_order_and_unwrap_with_arrays_and_conversions() {
        let schema = r#"
          <xs:element name="Op"><xs:complexType><xs:sequence>
            <xs:element name="Zeta" type="xs:string"/><xs:element name="Alpha" type="xs:int"/>
          </xs:sequence></xs:complexType></xs:element>
          <xs:element name="OpResponse"><xs:complexType><xs:sequence>
            <xs:element name="Item" maxOccurs="unbounded" type="tns:Item"/>
            <xs:element name="Ok" type="xs:boolean"/>
          </xs:sequence></xs:complexType></xs:element>
          <xs:complexType name="Item"><xs:sequence>
            <xs:element name="Price" type="xs:decimal"/><xs:element name="Tag" type="xs:string" maxOccurs="3"/>
          </xs:sequence></xs:complexType>"#;
        let out = import(&wsdl(schema, "document", "literal")).unwrap();
        assert!(out.contains("- soap_wrap: { version: '1.1', action: 'urn:t#Op', body_element: 'Op', namespace: 'urn:t', order: ['Zeta', 'Alpha'] }"), "{out}");
        assert!(out.contains("path: '/svc/S.asmx'"), "{out}");
        assert!(out.contains("endpoints: ['http://legacy.example:8080']"), "{out}");
        assert!(
            out.contains("- soap_unwrap: { array_paths: ['Item', 'Item.Tag'] }"),
            "{out}"
        );
        assert!(
            out.contains("- convert: { path: 'Item.*.Price', to: number }"),
            "{out}"
        );
        assert!(out.contains("- convert: { path: 'Ok', to: bool }"), "{out}");
        assert!(
            out.contains("match: { path: '/api/Op', methods: [POST] }"),
            "{out}"
        );
        assert!(!out.contains("Not mapped"), "{out}");
    }

    #[test]
    fn choice_any_and_attributes_are_named_in_a_comment_above_the_route() {
        let schema = r#"
          <xs:element name="Op"><xs:complexType><xs:sequence>
            <xs:choice><xs:element name="ById" type="xs:int"/><xs:element name="ByName" type="xs:string"/></xs:choice>
            <xs:any processContents="lax"/>
          </xs:sequence><xs:attribute name="lang" type="xs:string"/></xs:complexType></xs:element>
          <xs:element name="OpResponse"><xs:complexType><xs:sequence/></xs:complexType></xs:element>"#;
        let out = import(&wsdl(schema, "document", "literal")).unwrap();
        let routes = out.split("routes:\n").nth(1).unwrap();
        let comment_then_route = |needle: &str| {
            let at = routes
                .find(needle)
                .unwrap_or_else(|| panic!("`{needle}` missing:\n{out}"));
            assert!(at < routes.find("- name: op").unwrap(), "{out}");
        };
        comment_then_route("# Not mapped: xs:choice in `Op` (ById | ByName)");
        comment_then_route("# Not mapped: xs:any in `Op`");
        comment_then_route("# Not mapped: the attribute `lang` of `Op`");
    }

    #[test]
    fn rpc_encoded_is_imported_with_a_plain_warning() {
        let text = format!(
            r#"{HEAD}
  <message name="In"><part name="id" type="xs:int"/></message>
  <message name="Out"><part name="total" type="xs:decimal"/></message>
  <portType name="PT"><operation name="Op"><input message="tns:In"/><output message="tns:Out"/></operation></portType>
  <binding name="B" type="tns:PT"><soap:binding style="rpc" transport="http://schemas.xmlsoap.org/soap/http"/>
    <operation name="Op"><soap:operation soapAction=""/>
      <input><soap:body use="encoded" namespace="urn:rpc" encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"/></input>
      <output><soap:body use="encoded" namespace="urn:rpc"/></output></operation></binding>
</definitions>"#
        );
        let out = import(&text).unwrap();
        assert!(out.contains("# Not mapped: rpc style"), "{out}");
        assert!(
            out.contains("# Not mapped: rpc/encoded: ficus writes literal XML"),
            "{out}"
        );
        assert!(
            out.contains("body_element: 'Op', namespace: 'urn:rpc' }"),
            "{out}"
        );
        assert!(out.contains("- convert: { path: 'total', to: number }"), "{out}");
        assert!(out.contains("# the WSDL names no soap:address"), "{out}");
    }

    #[test]
    fn conflicting_sequences_are_reported_not_guessed() {
        let seqs = vec![
            vec!["A".to_string(), "B".to_string()],
            vec!["B".to_string(), "A".to_string()],
        ];
        assert!(merge_order(&seqs).is_err());
        let seqs = vec![
            vec!["Id".to_string(), "Lines".to_string()],
            vec!["Sku".to_string(), "Qty".to_string()],
            vec!["Lines".to_string(), "Total".to_string()],
        ];
        assert_eq!(
            merge_order(&seqs).unwrap(),
            ["Id", "Lines", "Sku", "Qty", "Total"]
        );
    }

    #[test]
    fn a_type_that_contains_itself_stops_instead_of_looping() {
        let schema = r#"
          <xs:element name="Op"><xs:complexType><xs:sequence><xs:element name="N" type="tns:Node"/></xs:sequence></xs:complexType></xs:element>
          <xs:element name="OpResponse" type="tns:Node"/>
          <xs:complexType name="Node"><xs:sequence>
            <xs:element name="V" type="xs:int"/><xs:element name="Child" type="tns:Node" minOccurs="0" maxOccurs="unbounded"/>
          </xs:sequence></xs:complexType>"#;
        let out = import(&wsdl(schema, "document", "literal")).unwrap();
        assert!(out.contains("the type `Node` contains itself"), "{out}");
        assert!(out.contains("array_paths: ['Child']"), "{out}");
    }

    #[test]
    fn not_a_wsdl_malformed_and_unknown_operations_are_errors_naming_the_file() {
        let e = import("<html><body/></html>").unwrap_err().to_string();
        assert!(
            e.starts_with("t.wsdl: not a WSDL 1.1 document: the root element is `html`"),
            "{e}"
        );
        let e = import("<definitions").unwrap_err().to_string();
        assert!(e.starts_with("t.wsdl: not well-formed XML"), "{e}");
        let text = wsdl(
            r#"<xs:element name="Op"/><xs:element name="OpResponse"/>"#,
            "document",
            "literal",
        );
        let opts = Options {
            operations: vec!["Nope".into()],
            ..Options::default()
        };
        let e = import_text(&text, Path::new("t.wsdl"), None, &opts)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "t.wsdl: no operation named `Nope` in the SOAP binding (it has: Op)"
        );
        let e = import(&format!(r#"{HEAD}<!-- no binding --></definitions>"#))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no SOAP 1.1 or 1.2 binding"), "{e}");
    }

    #[test]
    fn request_elements_in_another_namespace_than_soap_wrap_writes_are_reported() {
        let schema = r#"
          <xs:element name="Op"><xs:complexType><xs:sequence>
            <xs:element name="Id" type="xs:int" form="unqualified"/>
          </xs:sequence></xs:complexType></xs:element>
          <xs:element name="OpResponse"><xs:complexType><xs:sequence/></xs:complexType></xs:element>"#;
        let out = import(&wsdl(schema, "document", "literal")).unwrap();
        assert!(
            out.contains("# Not mapped: namespaces: soap_wrap writes every request element in the operation's namespace (urn:t), but the schema puts `Id` (no namespace) elsewhere"),
            "{out}"
        );
    }

    #[test]
    fn wsdl_text_cannot_end_a_comment_and_inject_config() {
        let text = wsdl(
            r#"<xs:element name="Op"/><xs:element name="OpResponse"/>"#,
            "document",
            "literal",
        )
        .replace(
            "http://legacy.example:8080/svc/S.asmx",
            "relative&#10;upstreams: {}",
        );
        let out = import(&text).unwrap();
        assert!(
            out.contains("soap:address `relative upstreams: {}` is not an absolute URL"),
            "{out}"
        );
        assert!(!out.contains("\nupstreams: {}"), "{out}");
    }

    #[test]
    fn a_file_without_a_size_on_disk_is_read_only_up_to_the_cap() {
        let zero = Path::new("/dev/zero");
        if zero.exists() {
            assert!(matches!(read_capped(zero), Err(Capped::TooLarge)));
        }
    }

    #[test]
    fn kebab_names_split_words_and_acronyms() {
        assert_eq!(kebab("GetOrder"), "get-order");
        assert_eq!(kebab("GetHTTPStatus2"), "get-http-status2");
        assert_eq!(kebab("list_orders"), "list-orders");
    }
}
