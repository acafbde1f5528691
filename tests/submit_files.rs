//! The submit files in docs/htcondor.md are meant to be copied as they are, so they are
//! checked here as far as that is possible without HTCondor: every ```condor block is
//! parsed as the submit language (`key = value`, `+Attr = value`, `queue`, trailing-
//! backslash continuations, `$(macro)` expansion), and the `arguments` of every baton
//! job is split the way HTCondor splits it (condor_utils/condor_arglist.cpp: the quoted
//! "new" syntax and the unquoted "old" one) and handed to baton's own parser
//! (`baton --parse-only ...`). The ```dag block's JOB lines must name a documented submit
//! file, whose macros its VARS lines fill in; ```sh blocks that are scripts must pass
//! `bash -n`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

// ---------------------------------------------------------------------------------
// The document

fn doc_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/htcondor.md")
}

#[derive(Debug, Clone)]
struct Block {
    lang: String,
    /// 1-based line of the opening fence, for messages.
    line: usize,
    text: String,
}

impl Block {
    fn at(&self) -> String {
        format!("docs/htcondor.md:{} (```{})", self.line, self.lang)
    }

    /// The file name the block's first comment gives it (`# train.sub: ...`), if any.
    fn name(&self) -> Option<String> {
        let first = self.text.lines().next()?.trim().strip_prefix('#')?.trim();
        let word = first.split(|c: char| c == ':' || c == ',' || c.is_whitespace()).next()?;
        word.contains('.').then(|| word.to_string())
    }

    fn first_comment(&self) -> String {
        self.text.lines().next().unwrap_or("").to_string()
    }
}

/// Fenced blocks: an opening fence at the start of a line, with its info string, up to
/// the next line that is just the fence.
fn fenced_blocks(md: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut cur: Option<Block> = None;
    for (i, line) in md.lines().enumerate() {
        match &mut cur {
            None => {
                if let Some(info) = line.strip_prefix("```") {
                    if !info.starts_with('`') {
                        cur = Some(Block { lang: info.trim().to_string(), line: i + 1, text: String::new() });
                    }
                }
            }
            Some(b) => {
                if line.trim_end() == "```" {
                    out.push(cur.take().unwrap());
                } else {
                    b.text.push_str(line);
                    b.text.push('\n');
                }
            }
        }
    }
    assert!(cur.is_none(), "docs/htcondor.md: a fenced block is never closed");
    out
}

fn blocks() -> Vec<Block> {
    let md = std::fs::read_to_string(doc_path()).expect("read docs/htcondor.md");
    fenced_blocks(&md)
}

// ---------------------------------------------------------------------------------
// The submit language

#[derive(Debug, Clone)]
struct Submit {
    /// Commands in order, keys lower-cased; `+Attr` is kept with its `+`.
    commands: Vec<(String, String)>,
    /// The text after each `queue`.
    queues: Vec<String>,
    /// Whether anything but comments follows the last `queue`.
    after_last_queue: bool,
}

impl Submit {
    /// The value of a command, as HTCondor sees it (the last one wins), unexpanded.
    fn raw(&self, key: &str) -> Option<&str> {
        let key = key.to_ascii_lowercase();
        self.commands.iter().rev().find(|(k, _)| *k == key).map(|(_, v)| v.as_str())
    }
}

fn is_submit_key(k: &str) -> bool {
    let k = k.strip_prefix('+').or_else(|| k.strip_prefix("MY.")).or_else(|| k.strip_prefix("my.")).unwrap_or(k);
    let mut chars = k.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// Parse submit-description text. Lines ending in a backslash continue on the next;
/// `#` starts a comment only at the start of a line (as in HTCondor, a `#` inside a value
/// is part of it).
fn parse_submit(text: &str) -> Result<Submit, String> {
    let mut logical: Vec<(usize, String)> = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end();
        let (start, mut acc) = pending.take().unwrap_or((i + 1, String::new()));
        if let Some(head) = line.strip_suffix('\\') {
            acc.push_str(head);
            pending = Some((start, acc));
        } else {
            acc.push_str(line);
            logical.push((start, acc));
        }
    }
    if let Some((start, _)) = pending {
        return Err(format!("line {start}: a continuation backslash on the last line"));
    }
    let mut s = Submit { commands: Vec::new(), queues: Vec::new(), after_last_queue: false };
    for (n, line) in logical {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let first = t.split_whitespace().next().unwrap();
        if first.eq_ignore_ascii_case("queue") {
            let rest = t[first.len()..].trim();
            check_queue_args(rest).map_err(|e| format!("line {n}: {e}"))?;
            s.queues.push(rest.to_string());
            s.after_last_queue = false;
            continue;
        }
        let Some((k, v)) = t.split_once('=') else {
            return Err(format!("line {n}: not `key = value` nor `queue`: {t:?}"));
        };
        let k = k.trim();
        if !is_submit_key(k) {
            return Err(format!("line {n}: {k:?} is not a submit command name"));
        }
        let k = if let Some(a) = k.strip_prefix("MY.").or_else(|| k.strip_prefix("my.")) { format!("+{a}") } else { k.to_string() };
        let v = v.trim();
        if k.starts_with('+') && v.is_empty() {
            return Err(format!("line {n}: {k} has no ClassAd value"));
        }
        s.commands.push((k.to_ascii_lowercase(), v.to_string()));
        s.after_last_queue = !s.queues.is_empty();
    }
    Ok(s)
}

/// `queue`, `queue N`, `queue [N] vars from|in|matching ...`.
fn check_queue_args(rest: &str) -> Result<(), String> {
    if rest.is_empty() || rest.parse::<u32>().is_ok() {
        return Ok(());
    }
    let lower = format!(" {} ", rest.to_ascii_lowercase());
    if [" from ", " in ", " matching "].iter().any(|w| lower.contains(w)) {
        return Ok(());
    }
    Err(format!("`queue {rest}` is not a queue statement this check understands"))
}

/// The variables of each job of the last `queue NAME in (a, b, c)` (one line; items
/// separated by commas or blanks), or none for another kind of queue statement.
fn queue_items(submit: &Submit) -> Vec<BTreeMap<String, String>> {
    let Some(rest) = submit.queues.last() else { return Vec::new() };
    let Some((name, list)) = rest.split_once(" in ") else { return Vec::new() };
    let Some(items) = list.trim().strip_prefix('(').and_then(|l| l.strip_suffix(')')) else { return Vec::new() };
    let name = name.split_whitespace().last().unwrap_or_default();
    items
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|i| !i.is_empty())
        .map(|i| BTreeMap::from([(name.to_string(), i.to_string())]))
        .collect()
}

/// Sample values for HTCondor's built-in macros.
fn builtin(name: &str) -> Option<&'static str> {
    Some(match name.to_ascii_lowercase().as_str() {
        "cluster" | "clusterid" => "1234",
        "process" | "procid" => "0",
        "node" => "0",
        "step" | "row" => "0",
        "item" => "item0",
        _ => return None,
    })
}

/// Expand `$(name)` and `$(name:default)` macros: DAG VARS first, then the submit
/// file's own commands, then HTCondor's built-ins. `$$(...)` (match-time) is left
/// alone. An undefined macro is an error, so that a typo in the docs is caught.
fn expand(value: &str, submit: &Submit, vars: &BTreeMap<String, String>, depth: usize) -> Result<String, String> {
    if depth > 16 {
        return Err(format!("macro recursion too deep in {value:?}"));
    }
    let mut out = String::new();
    let mut rest = value;
    while let Some(pos) = rest.find("$(") {
        if rest[..pos].ends_with('$') {
            // `$$(`: keep it, and what it encloses, as is.
            let end = rest[pos..].find(')').ok_or_else(|| format!("unclosed $$( in {value:?}"))? + pos;
            out.push_str(&rest[..=end]);
            rest = &rest[end + 1..];
            continue;
        }
        out.push_str(&rest[..pos]);
        let end = rest[pos..].find(')').ok_or_else(|| format!("unclosed $( in {value:?}"))? + pos;
        let inner = &rest[pos + 2..end];
        let (name, default) = match inner.split_once(':') {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        let lower = name.to_ascii_lowercase();
        let found = vars
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .or_else(|| submit.raw(&lower).map(str::to_string))
            .or_else(|| builtin(name).map(str::to_string))
            .or_else(|| default.map(str::to_string))
            .ok_or_else(|| format!("undefined macro $({name}) in {value:?}"))?;
        out.push_str(&expand(&found, submit, vars, depth + 1)?);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

// ---------------------------------------------------------------------------------
// HTCondor's argument syntax (condor_utils/condor_arglist.cpp)

/// Split an `arguments` value into argv words. A value whose first non-blank character
/// is a double quote is the new syntax: the whole value is double-quoted (`""` is a
/// literal double quote, nothing but blanks may follow the closing quote), words are
/// separated by blanks, and single quotes group (`''` inside them is a literal single
/// quote; `''` alone is an empty word). Otherwise it is the old syntax: words are
/// separated by blanks, `\"` is a literal double quote and a bare `"` is an error.
fn split_arguments(value: &str) -> Result<Vec<String>, String> {
    let v = value.trim_start();
    if let Some(body) = v.strip_prefix('"') {
        let mut raw = String::new();
        let mut chars = body.chars().peekable();
        let mut closed = false;
        while let Some(c) = chars.next() {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    raw.push('"');
                } else {
                    closed = true;
                    break;
                }
            } else {
                raw.push(c);
            }
        }
        if !closed {
            return Err("unterminated double quote".into());
        }
        let trailing: String = chars.collect();
        if !trailing.trim().is_empty() {
            return Err(format!(
                "unexpected characters after the closing double quote: {trailing:?} (a literal double quote is written \"\")"
            ));
        }
        split_v2_raw(&raw)
    } else {
        let mut raw = String::new();
        let mut chars = v.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' if chars.peek() == Some(&'"') => {
                    chars.next();
                    raw.push('"');
                }
                '"' => return Err(format!("illegal unescaped double quote in old-style arguments {value:?}")),
                c => raw.push(c),
            }
        }
        Ok(raw.split([' ', '\t', '\n', '\r']).filter(|w| !w.is_empty()).map(str::to_string).collect())
    }
}

/// The raw new syntax, as `split_args` in condor_arglist.cpp.
fn split_v2_raw(raw: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut buf = String::new();
    let mut token = false;
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                token = true;
                let mut closed = false;
                while let Some(q) = chars.next() {
                    if q == '\'' {
                        if chars.peek() == Some(&'\'') {
                            chars.next();
                            buf.push('\'');
                        } else {
                            closed = true;
                            break;
                        }
                    } else {
                        buf.push(q);
                    }
                }
                if !closed {
                    return Err(format!("unbalanced single quote in {raw:?}"));
                }
            }
            ' ' | '\t' | '\n' | '\r' => {
                if token {
                    out.push(std::mem::take(&mut buf));
                    token = false;
                }
            }
            c => {
                token = true;
                buf.push(c);
            }
        }
    }
    if token {
        out.push(buf);
    }
    Ok(out)
}

/// `environment`: the new syntax is a double-quoted list of blank-separated NAME=VALUE
/// words (quoting as for arguments); the old one separates them with `;`.
fn split_environment(value: &str) -> Result<BTreeMap<String, String>, String> {
    let words = if value.trim_start().starts_with('"') {
        split_arguments(value)?
    } else {
        value.split(';').map(|w| w.trim().to_string()).filter(|w| !w.is_empty()).collect()
    };
    let mut env = BTreeMap::new();
    for w in words {
        let (k, v) = w.split_once('=').ok_or_else(|| format!("environment entry {w:?} is not NAME=VALUE"))?;
        env.insert(k.to_string(), v.to_string());
    }
    Ok(env)
}

fn split_list(value: &str) -> Vec<String> {
    value.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

// ---------------------------------------------------------------------------------
// baton

/// `baton --parse-only ARGS`: Ok on `command line ok`, else clap's message.
fn baton_parses(args: &[String]) -> Result<(), String> {
    let out = clean_baton().arg("--parse-only").args(args).output().expect("run baton");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) if stdout.trim() == "command line ok" => Ok(()),
        code => Err(format!("baton {args:?} exited {code:?}: {stdout}{stderr}")),
    }
}

/// baton with no store, run id or HTCondor variables inherited from the test's environment.
fn clean_baton() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_baton"));
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().to_string();
        if k.starts_with("BATON_") || k.starts_with("_CONDOR_") || k.starts_with("AWS_") {
            c.env_remove(&k);
        }
    }
    c
}

/// The AWS variables baton (src/store/s3.rs, and object_store's `from_env`) reads.
const AWS_VARS: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT",
    "AWS_ACCESS_KEY_ID_FILE",
    "AWS_SECRET_ACCESS_KEY_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_PROFILE",
];

/// Signals `baton run` handles as an eviction.
const EVICTION_SIGNALS: &[&str] = &["SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2"];

/// What a checked baton job amounts to.
#[derive(Debug)]
struct BatonJob {
    argv: Vec<String>,
    store: Option<String>,
    run_id: Option<String>,
}

fn executable_is_baton(submit: &Submit) -> bool {
    submit.raw("executable").map(|e| e.rsplit('/').next() == Some("baton")).unwrap_or(false)
}

/// Every check a submit file whose executable is baton must pass. `vars` are the DAG
/// node's VARS (empty outside a DAG); `_text` is the block (unused since no example is
/// marked PLANNED any more).
fn check_baton_job(submit: &Submit, vars: &BTreeMap<String, String>, _text: &str) -> Result<BatonJob, String> {
    let get = |k: &str| -> Result<Option<String>, String> { submit.raw(k).map(|v| expand(v, submit, vars, 0)).transpose() };
    let args = get("arguments")?.ok_or("a baton job without `arguments`")?;
    let argv = split_arguments(&args).map_err(|e| format!("arguments {args:?}: {e}"))?;
    if argv.first().map(String::as_str) != Some("run") {
        return Err(format!("arguments {argv:?} do not start with `run`"));
    }
    let dashes = argv.iter().position(|a| a == "--").ok_or_else(|| format!("arguments {argv:?}: no `--` before the training command"))?;
    if dashes + 1 == argv.len() {
        return Err(format!("arguments {argv:?}: nothing after `--`"));
    }
    baton_parses(&argv)?;
    let flag = |name: &str| -> Option<String> {
        let own = &argv[..dashes];
        own.iter()
            .position(|a| a == name)
            .and_then(|i| own.get(i + 1).cloned())
            .or_else(|| own.iter().find_map(|a| a.strip_prefix(&format!("{name}=")).map(str::to_string)))
    };
    let store = flag("--store");
    let run_id = flag("--run-id");

    // File transfer and eviction settings that baton relies on.
    let stf = get("should_transfer_files")?.unwrap_or_default();
    if !stf.eq_ignore_ascii_case("YES") {
        return Err(format!("should_transfer_files = {stf:?}; baton jobs transfer their files (YES)"));
    }
    let wtto = get("when_to_transfer_output")?.unwrap_or_default();
    if !wtto.eq_ignore_ascii_case("ON_EXIT") {
        return Err(format!("when_to_transfer_output = {wtto:?}; under baton use ON_EXIT (baton flushes on eviction)"));
    }
    if let Some(sig) = get("kill_sig")? {
        if !EVICTION_SIGNALS.iter().any(|s| s.eq_ignore_ascii_case(&sig) || s[3..].eq_ignore_ascii_case(&sig)) {
            return Err(format!("kill_sig = {sig}: baton treats only {EVICTION_SIGNALS:?} as an eviction"));
        }
    }
    if submit.raw("transfer_checkpoint_files").is_some() {
        return Err("transfer_checkpoint_files in a baton job: baton stores the checkpoints".into());
    }
    if get("transfer_executable")?.is_some_and(|v| v.eq_ignore_ascii_case("false")) {
        return Err("transfer_executable = false: the baton binary must be transferred".into());
    }
    if let Some(v) = get("job_max_vacate_time")? {
        let secs: u64 = v.parse().map_err(|_| format!("job_max_vacate_time = {v:?} is not a number of seconds"))?;
        if secs < 2 {
            return Err(format!("job_max_vacate_time = {secs}: baton refuses a vacate window under 2 s"));
        }
    }

    // The store, and what it needs from the environment.
    let env = match get("environment")? {
        Some(e) => split_environment(&e)?,
        None => BTreeMap::new(),
    };
    for k in env.keys().filter(|k| k.starts_with("AWS_")) {
        if !AWS_VARS.contains(&k.as_str()) {
            return Err(format!("environment sets {k}, which baton does not read"));
        }
    }
    let inputs = get("transfer_input_files")?.map(|v| split_list(&v)).unwrap_or_default();
    match store.as_deref() {
        Some(s) if s.starts_with("s3://") => {
            let bucket = s["s3://".len()..].split('/').next().unwrap_or("");
            if bucket.is_empty() {
                return Err(format!("--store {s}: no bucket"));
            }
            let has_keys = env.contains_key("AWS_ACCESS_KEY_ID") && env.contains_key("AWS_SECRET_ACCESS_KEY");
            let key_files: Vec<_> = ["AWS_ACCESS_KEY_ID_FILE", "AWS_SECRET_ACCESS_KEY_FILE"].iter().filter_map(|k| env.get(*k)).collect();
            if key_files.len() == 1 {
                return Err("set both AWS_ACCESS_KEY_ID_FILE and AWS_SECRET_ACCESS_KEY_FILE, or neither".into());
            }
            if !has_keys && key_files.is_empty() {
                return Err(format!("--store {s} but the environment gives no S3 keys nor key files"));
            }
            for f in key_files {
                // A relative key file is found in the sandbox only if it was transferred.
                if !f.starts_with('/') && !inputs.iter().any(|i| i == f) {
                    return Err(format!("key file {f} is named in environment but not in transfer_input_files {inputs:?}"));
                }
            }
        }
        Some(s) if is_pelican_store(s) => {
            // The bearer token: HTCondor's credential directory, or a file baton is told about.
            let oauth = get("use_oauth_services")?.is_some();
            let token_file =
                flag("--token-file").or_else(|| env.get("BEARER_TOKEN_FILE").cloned()).or_else(|| env.get("BATON_TOKEN_FILE").cloned());
            match (oauth, token_file) {
                (false, None) => {
                    return Err(format!(
                        "--store {s} but no token: use_oauth_services (HTCondor keeps a token in $_CONDOR_CREDS), or --token-file / BEARER_TOKEN_FILE"
                    ))
                }
                (_, Some(f)) if !f.starts_with('/') && !inputs.contains(&f) => {
                    return Err(format!("token file {f} is not in transfer_input_files {inputs:?}"));
                }
                _ => {}
            }
        }
        Some(s) => {
            return Err(format!("--store {s}: use s3:// (or a shared filesystem) in a submit file; a sandbox directory dies with the slot"))
        }
        None => return Err("no --store: the default store is a directory inside the sandbox, which dies with the slot".into()),
    }
    Ok(BatonJob { argv, store, run_id })
}

// ---------------------------------------------------------------------------------
// DAG files

#[derive(Debug, Default)]
struct Dag {
    /// node name -> submit file
    jobs: BTreeMap<String, String>,
    /// node name -> VARS
    vars: BTreeMap<String, BTreeMap<String, String>>,
}

/// JOB, VARS, RETRY, PARENT/CHILD and comments; anything else is an error.
fn parse_dag(text: &str) -> Result<Dag, String> {
    let mut dag = Dag::default();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let words: Vec<&str> = t.split_whitespace().collect();
        match words[0].to_ascii_uppercase().as_str() {
            "JOB" => {
                let (Some(name), Some(file)) = (words.get(1), words.get(2)) else {
                    return Err(format!("line {n}: JOB needs a name and a submit file"));
                };
                if dag.jobs.insert(name.to_string(), file.to_string()).is_some() {
                    return Err(format!("line {n}: node {name} defined twice"));
                }
            }
            "VARS" => {
                let name = words.get(1).ok_or_else(|| format!("line {n}: VARS needs a node name"))?;
                let rest = t.splitn(3, char::is_whitespace).nth(2).unwrap_or("").trim();
                let entry = dag.vars.entry(name.to_string()).or_default();
                // key="value" pairs; values are double-quoted.
                let mut r = rest;
                while !r.is_empty() {
                    let (k, after) = r.split_once("=\"").ok_or_else(|| format!("line {n}: VARS entry without key=\"value\": {r:?}"))?;
                    let end = after.find('"').ok_or_else(|| format!("line {n}: unterminated VARS value"))?;
                    entry.insert(k.trim().to_string(), after[..end].to_string());
                    r = after[end + 1..].trim_start();
                }
            }
            "RETRY" => {
                let count = words.get(2).ok_or_else(|| format!("line {n}: RETRY needs a node and a count"))?;
                count.parse::<u32>().map_err(|_| format!("line {n}: RETRY count {count:?}"))?;
            }
            "PARENT" => {}
            other => return Err(format!("line {n}: {other} is not a DAG command this check knows")),
        }
    }
    for node in dag.vars.keys() {
        if !dag.jobs.contains_key(node) && node != "ALL_NODES" {
            return Err(format!("VARS for undefined node {node}"));
        }
    }
    Ok(dag)
}

// ---------------------------------------------------------------------------------
// The tests

#[test]
fn every_condor_block_is_a_valid_submit_file_and_baton_accepts_its_arguments() {
    let blocks = blocks();
    let condor: Vec<&Block> = blocks.iter().filter(|b| b.lang == "condor").collect();
    assert!(condor.len() >= 6, "expected the documented submit files, found {} ```condor blocks", condor.len());
    let mut baton_jobs = 0;
    for b in &condor {
        let submit = parse_submit(&b.text).unwrap_or_else(|e| panic!("{}: {e}", b.at()));
        let exe = submit.raw("executable").unwrap_or_else(|| panic!("{}: no executable", b.at()));
        assert!(!submit.queues.is_empty(), "{}: no queue statement", b.at());
        assert!(!submit.after_last_queue, "{}: commands after the last queue are ignored by HTCondor", b.at());
        if executable_is_baton(&submit) {
            // Nodes of a DAG get their macros from the DAG; they are checked per node below.
            // A `queue NAME in (ITEMS)` fills NAME from each item: checked with every item.
            let every = queue_items(&submit);
            for vars in every.iter().skip(1) {
                check_baton_job(&submit, vars, &b.text).unwrap_or_else(|e| panic!("{}: with {vars:?}: {e}", b.at()));
            }
            let vars = every.into_iter().next().unwrap_or_default();
            let uses_dag_vars = submit.raw("arguments").is_some_and(|a| expand(a, &submit, &vars, 0).is_err());
            if uses_dag_vars {
                assert!(b.first_comment().contains("VARS"), "{}: undefined macros outside a DAG node", b.at());
                continue;
            }
            let job = check_baton_job(&submit, &vars, &b.text).unwrap_or_else(|e| panic!("{}: {e}", b.at()));
            baton_jobs += 1;
            if let Some(id) = &job.run_id {
                assert!(!id.contains("$("), "{}: unexpanded macro in run id {id}", b.at());
            }
        } else {
            // The only non-baton submit file is the "before" half of the exit-85 migration.
            assert!(
                b.first_comment().contains("before"),
                "{}: executable {exe} is not baton and the block is not marked as the `before` example",
                b.at()
            );
            assert!(submit.raw("checkpoint_exit_code").is_some(), "{}: the before example is an exit-85 job", b.at());
        }
    }
    assert!(baton_jobs >= 4, "only {baton_jobs} baton submit files were checked");
}

#[test]
fn the_exit85_migration_keeps_the_exit_code_and_points_dir_at_the_script_output() {
    let blocks = blocks();
    let named: Vec<&Block> = blocks.iter().filter(|b| b.lang == "condor" && b.name().as_deref() == Some("train_ckpt.sub")).collect();
    assert_eq!(named.len(), 2, "the before and after versions of train_ckpt.sub");
    let before = parse_submit(&named[0].text).unwrap();
    let after = parse_submit(&named[1].text).unwrap();
    assert_eq!(before.raw("checkpoint_exit_code"), Some("85"));
    assert_eq!(after.raw("checkpoint_exit_code"), Some("85"), "baton reads SuccessCheckpointExitCode from the job ad");
    assert!(before.raw("transfer_checkpoint_files").is_some() && after.raw("transfer_checkpoint_files").is_none());
    let job = check_baton_job(&after, &BTreeMap::new(), &named[1].text).unwrap();
    let dir = job.argv.iter().position(|a| a == "--dir").map(|i| job.argv[i + 1].clone());
    let ckpt = before.raw("transfer_checkpoint_files").unwrap();
    assert!(
        dir.as_deref().is_some_and(|d| ckpt.starts_with(&format!("{d}/"))),
        "--dir {dir:?} should be the directory of the old transfer_checkpoint_files {ckpt}"
    );
    // The script and its arguments are unchanged, behind `--`.
    let dashes = job.argv.iter().position(|a| a == "--").unwrap();
    let old: Vec<String> = std::iter::once(before.raw("executable").unwrap().to_string())
        .chain(split_arguments(before.raw("arguments").unwrap()).unwrap())
        .collect();
    assert_eq!(job.argv[dashes + 1..], old[..]);
}

/// pelican://, osdf://, stash://, and HTCondor's `name+osdf://` form.
fn is_pelican_store(s: &str) -> bool {
    let scheme = s.split_once("://").map(|(sc, _)| sc.rsplit('+').next().unwrap_or(sc)).unwrap_or("");
    matches!(scheme, "pelican" | "osdf" | "stash")
}

#[test]
fn the_pelican_submit_file_names_a_store_baton_accepts() {
    let blocks = blocks();
    let mut pelican = 0;
    for b in blocks.iter().filter(|b| b.lang == "condor") {
        let submit = parse_submit(&b.text).unwrap();
        if !executable_is_baton(&submit) {
            continue;
        }
        let Ok(job) = check_baton_job(&submit, &BTreeMap::new(), &b.text) else { continue };
        let store = job.store.clone().unwrap();
        if !is_pelican_store(&store) {
            continue;
        }
        assert!(!b.text.contains("PLANNED"), "{}: Pelican stores are supported now", b.at());
        // --parse-only checks the store URL itself: the same arguments with a broken URL fail.
        let mut argv = job.argv.clone();
        let i = argv.iter().position(|a| *a == store).unwrap();
        argv[i] = "osdf:///".into();
        let e = baton_parses(&argv).unwrap_err();
        assert!(e.contains("exited Some(2)") && e.contains("no namespace"), "{}: {e}", b.at());
        pelican += 1;
    }
    assert_eq!(pelican, 1, "the Pelican/OSDF section has one submit file");
}

#[test]
fn dag_blocks_name_documented_submit_files_whose_nodes_parse() {
    let blocks = blocks();
    let dags: Vec<&Block> = blocks.iter().filter(|b| b.lang == "dag").collect();
    assert_eq!(dags.len(), 1, "one DAG example");
    // DAG files are not submit files: they are checked here, never as ```condor.
    assert!(blocks.iter().filter(|b| b.lang == "condor").all(|b| parse_dag(&b.text).is_err()), "a DAG written as ```condor");
    let submit_files: BTreeMap<String, &Block> =
        blocks.iter().filter(|b| b.lang == "condor").filter_map(|b| Some((b.name()?, b))).collect();
    for d in dags {
        let dag = parse_dag(&d.text).unwrap_or_else(|e| panic!("{}: {e}", d.at()));
        assert!(dag.jobs.len() >= 2, "{}: a multi-node example needs several nodes", d.at());
        let mut nodes = Vec::new();
        for (node, file) in &dag.jobs {
            let b = submit_files.get(file).unwrap_or_else(|| panic!("{}: JOB {node} {file}: no ```condor block named {file}", d.at()));
            let submit = parse_submit(&b.text).unwrap();
            assert!(executable_is_baton(&submit), "{}: node {node} does not run under baton", b.at());
            let mut vars = dag.vars.get("ALL_NODES").cloned().unwrap_or_default();
            vars.extend(dag.vars.get(node).cloned().unwrap_or_default());
            let job = check_baton_job(&submit, &vars, &b.text).unwrap_or_else(|e| panic!("{} as node {node}: {e}", b.at()));
            let id = job.run_id.unwrap_or_else(|| panic!("{}: node {node} needs an explicit --run-id (a DAG retry is a new job)", b.at()));
            assert!(!id.contains("$("), "{id}");
            let flag = |name: &str| job.argv.iter().position(|a| a == name).and_then(|i| job.argv.get(i + 1)).cloned();
            nodes.push((id, flag("--nodes"), flag("--node-rank")));
        }
        // One run on several nodes: the same run id and node count, a rank each.
        let (id, count) = (&nodes[0].0, &nodes[0].1);
        assert!(nodes.iter().all(|(i, c, _)| i == id && c == count), "{}: the nodes of one run differ: {nodes:?}", d.at());
        assert_eq!(count.as_deref(), Some(nodes.len().to_string().as_str()), "{}: --nodes is the DAG's node count: {nodes:?}", d.at());
        let mut ranks: Vec<_> = nodes.iter().map(|(_, _, r)| r.clone().expect("a --node-rank")).collect();
        ranks.sort();
        ranks.dedup();
        assert_eq!(ranks.len(), nodes.len(), "{}: two nodes share a rank: {nodes:?}", d.at());
    }
}

#[test]
fn shell_scripts_in_the_doc_are_valid_bash() {
    let mut checked = 0;
    for b in blocks().iter().filter(|b| b.lang == "sh" && b.text.starts_with("#!/bin/bash")) {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("script.sh");
        std::fs::write(&f, &b.text).unwrap();
        let out = Command::new("bash").arg("-n").arg(&f).output().unwrap();
        assert!(out.status.success(), "{}: {}", b.at(), String::from_utf8_lossy(&out.stderr));
        checked += 1;
    }
    assert!(checked >= 1, "the DAG example's launch script");
}

// --- the parsers themselves, and that the checks can fail ----------------------------

#[test]
fn htcondor_argument_quoting() {
    let ok = |s: &str| split_arguments(s).unwrap_or_else(|e| panic!("{s}: {e}"));
    // The examples of the condor_submit manual.
    assert_eq!(ok(r#""3 simple arguments""#), ["3", "simple", "arguments"]);
    assert_eq!(ok(r#""one 'two with spaces' 3""#), ["one", "two with spaces", "3"]);
    assert_eq!(ok(r#""one ""two"" 'spacey ''quoted'' argument'""#), ["one", "\"two\"", "spacey 'quoted' argument"]);
    // Empty words, adjacent quoted sections, blanks around the quoted value.
    assert_eq!(ok(r#"  "a '' b"  "#), ["a", "", "b"]);
    assert_eq!(ok(r#""x'a b'y""#), ["xa by"]);
    assert_eq!(ok(r#""""#), Vec::<String>::new());
    // The old syntax.
    assert_eq!(ok(r#"one \"two\"   three"#), ["one", "\"two\"", "three"]);
    assert_eq!(ok("it's 'old'"), ["it's", "'old'"]);
    // Errors HTCondor reports too.
    assert!(split_arguments(r#""unterminated"#).unwrap_err().contains("unterminated"));
    assert!(split_arguments(r#""a" b"#).unwrap_err().contains("after the closing double quote"));
    assert!(split_arguments(r#""a 'b c""#).unwrap_err().contains("unbalanced single quote"));
    assert!(split_arguments(r#"a "b" c"#).unwrap_err().contains("unescaped double quote"));
}

#[test]
fn submit_language_parsing() {
    let s = parse_submit(
        "# c\nexecutable = baton\narguments = \"run -- a \\\n  b\"\n+Is_Resumable = true\nMY.Foo = 1\nname = x$(Cluster)\nqueue 3\n",
    )
    .unwrap();
    assert_eq!(s.raw("arguments"), Some("\"run -- a   b\""));
    assert_eq!(s.raw("+is_resumable"), Some("true"));
    assert_eq!(s.raw("+foo"), Some("1"));
    assert_eq!(s.queues, ["3"]);
    let vars = BTreeMap::from([("rank".to_string(), "1".to_string())]);
    assert_eq!(expand("$(name)-$(Process)-$(rank)-$(missing:d)-$$(Memory)", &s, &vars, 0).unwrap(), "x1234-0-1-d-$$(Memory)");
    assert!(expand("$(nope)", &s, &vars, 0).unwrap_err().contains("undefined macro"));
    assert!(parse_submit("executable = baton\nthis is not submit\nqueue\n").is_err());
    assert!(parse_submit("executable = baton\nqueue maybe\n").is_err());
    assert!(parse_submit("executable = baton\narguments = a \\").is_err());
    let env = split_environment("\"A=1 B='x y' C=\"").unwrap();
    assert_eq!(env.get("B").map(String::as_str), Some("x y"));
    assert_eq!(env.get("C").map(String::as_str), Some(""));
}

const GOOD: &str = "\
executable = baton
arguments = \"run --store s3://ml-ckpt/x -- python3 train.py --name 'a b'\"
environment = \"AWS_ENDPOINT_URL=https://s3.example.org AWS_ACCESS_KEY_ID_FILE=k AWS_SECRET_ACCESS_KEY_FILE=s\"
transfer_input_files = train.py, k, s
should_transfer_files = YES
when_to_transfer_output = ON_EXIT
queue
";

fn check_text(text: &str) -> Result<BatonJob, String> {
    check_baton_job(&parse_submit(text)?, &BTreeMap::new(), text)
}

#[test]
fn a_good_submit_file_passes_and_broken_arguments_fail() {
    let job = check_text(GOOD).unwrap();
    assert_eq!(job.argv.last().map(String::as_str), Some("a b"));
    let broken = |from: &str, to: &str| check_text(&GOOD.replace(from, to)).unwrap_err();
    // The training command without `--`: clap refuses it (exit 2 from --parse-only).
    let e = broken("-- python3 train.py --name 'a b'", "python3 train.py");
    assert!(e.contains("no `--`"), "{e}");
    let e = baton_parses(&["run".into(), "--store".into(), "s3://b".into(), "python3".into(), "train.py".into()]).unwrap_err();
    assert!(e.contains("exited Some(2)") && e.contains("unexpected argument 'python3'"), "{e}");
    // `--` with nothing after it: --parse-only says what baton run would.
    let e = baton_parses(&["run".into(), "--store".into(), "s3://b".into(), "--".into()]).unwrap_err();
    assert!(e.contains("exited Some(2)") && e.contains("needs a command after `--`"), "{e}");
    // A trainer flag put before `--`.
    let e = broken("--store s3://ml-ckpt/x --", "--store s3://ml-ckpt/x --epochs 3 --");
    assert!(e.contains("exited Some(2)") && e.contains("--epochs"), "{e}");
    // A misspelt baton flag, a bad run id, a bad duration.
    assert!(broken("--store s3", "--stroe s3").contains("exited Some(2)"));
    assert!(broken("run --store", "run --run-id a/b --store").contains("exited Some(2)"));
    assert!(broken("run --store", "run --vacate-window soon --store").contains("exited Some(2)"));
    // Quoting HTCondor itself would reject.
    assert!(broken("'a b'", "'a b").contains("unbalanced single quote"));
    assert!(broken("'a b'\"", "'a b'\" extra").contains("after the closing double quote"));
    // Submit settings that defeat baton.
    assert!(broken("ON_EXIT", "ON_EXIT_OR_EVICT").contains("ON_EXIT"));
    assert!(broken("queue", "kill_sig = SIGKILL\nqueue").contains("kill_sig"));
    assert!(broken("queue", "transfer_checkpoint_files = out\nqueue").contains("transfer_checkpoint_files"));
    assert!(broken("train.py, k, s", "train.py, k").contains("not in transfer_input_files"));
    assert!(broken("AWS_ENDPOINT_URL=", "AWS_ENDPOINT_URI=").contains("does not read"));
    // A Pelican store needs a token: HTCondor's (use_oauth_services) or a transferred file.
    assert!(broken("s3://ml-ckpt/x", "osdf:///ns/x").contains("no token"));
    let osdf = GOOD.replace("s3://ml-ckpt/x", "osdf:///ns/x");
    assert!(check_text(&osdf.replace("queue", "use_oauth_services = scitokens\nqueue")).is_ok());
    assert!(check_text(&osdf.replace("run --store", "run --token-file k --store")).is_ok());
    assert!(check_text(&osdf.replace("run --store", "run --token-file tok --store")).unwrap_err().contains("not in transfer_input_files"));
    assert!(broken("s3://ml-ckpt/x", "osdf:///").contains("no namespace"), "--parse-only checks the URL");
    assert!(broken("--store s3://ml-ckpt/x ", "").contains("no --store"));
}
