#!/usr/bin/env node
// Checks KQL scripts with Microsoft's own parser and semantic analyser (Kusto.Language, the
// engine of Kusto Explorer and the Azure Data Explorer web UI, as the npm package
// @kusto/language-service-next ships it: a Bridge.NET build that runs under plain Node).
//
//   node tests/contract/kql_check.cjs SCHEMA.json FILE.kql [FILE.kql ...]
//
// SCHEMA.json describes the database the scripts run against:
//   {"database": "auditlake",
//    "tables": [{"name": "SignIn", "columns": [{"name": "TimeGenerated", "type": "datetime"}, ...]}],
//    "materializedViews": [{"name": "SignInDedup", "source": "SignIn", "columns": [...]}]}
// Every function a file defines (`.create[-or-alter] function Name(params) { body }`, `.alter
// function`) joins that database before any file is analysed, so functions may call each other
// whatever the order of the files.
//
// Each file is cut into commands at the lines that start with a dot outside any brackets, string
// or comment (so a function body may hold blank lines), and each command is parsed and analysed
// on its own: syntax errors, and semantic errors in view queries and function bodies (unknown
// table, column or function, wrong argument types). Besides the library's diagnostics, it
// reports a command the library does not recognise (a typo such as `.create-merge tabel` that
// it would otherwise take silently), a function defined twice, and a materialized view whose
// query does not yield the columns SCHEMA.json declares for it.
//
// Prints JSON: {"ok", "errorCount", "package", "files": [{"file", "commands": [{"index", "line",
// "start", "kind", "text", "errors": [{"code", "message", "start", "length", "line", "column"}],
// "warnings": [...]}]}]}; `start` is an offset in the file, `line` and `column` count from 1.
// Exit status: 0 no error, 1 errors, 2 the check itself could not run (usage, schema, package).
'use strict';

const fs = require('fs');
const path = require('path');

const PACKAGE = '@kusto/language-service-next';

const MAY_DEFINE_FUNCTION = /^\.\s*(create|create-or-alter|alter)\s+function\b/i;

class SetupError extends Error {}

function loadKusto() {
  let dir;
  try {
    dir = path.dirname(require.resolve(`${PACKAGE}/package.json`, { paths: [__dirname, process.cwd()] }));
  } catch {
    throw new SetupError(`${PACKAGE} is not installed: run \`npm ci\` in the repository root (\`make test\` does)`);
  }
  // The Bridge.NET runtime defines the global `Bridge` (and `System`) when loaded as a module;
  // the Kusto.Language assembly then registers the global `Kusto` with it.
  require(path.join(dir, 'bridge.min.js'));
  require(path.join(dir, 'Kusto.Language.Bridge.min.js'));
  if (typeof globalThis.Kusto === 'undefined' || !globalThis.Kusto.Language) {
    throw new SetupError(`${PACKAGE} loaded but defined no Kusto.Language`);
  }
  const version = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')).version;
  return { K: globalThis.Kusto.Language, Bridge: globalThis.Bridge, version };
}

function token(K) {
  return new K.Utils.CancellationToken.ctor();
}

function list(items) {
  const out = [];
  if (!items) return out;
  for (let i = 0; i < items.Count; i++) out.push(items.getItem(i));
  return out;
}

function children(node) {
  const out = [];
  for (let i = 0; i < node.ChildCount; i++) {
    const c = node.GetChild(i);
    if (c) out.push(c);
  }
  return out;
}

function walk(node, visit) {
  visit(node);
  for (const c of children(node)) walk(c, visit);
}

class Lines {
  constructor(text) {
    this.starts = [0];
    for (let i = 0; i < text.length; i++) if (text[i] === '\n') this.starts.push(i + 1);
  }

  at(offset) {
    let lo = 0;
    let hi = this.starts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.starts[mid] <= offset) lo = mid;
      else hi = mid - 1;
    }
    return { line: lo + 1, column: offset - this.starts[lo] + 1 };
  }
}

// Offsets where a command starts: a `.` token first on its line at bracket depth 0. Text before
// the first command that holds more than comments (a plain query) is a block of its own.
function splitCommands(K, text) {
  const tokens = K.Parsing.TokenParser.ParseTokens(text) || [];
  const starts = [];
  let pos = 0;
  let depth = 0;
  let lineStart = true;
  let firstToken = -1;
  for (const t of tokens) {
    const trivia = t.Trivia || '';
    const body = t.Text || '';
    if (trivia.includes('\n')) lineStart = true;
    const start = pos + trivia.length;
    if (body.length > 0) {
      if (firstToken < 0) firstToken = start;
      if (body === '.' && depth === 0 && lineStart) starts.push(start);
      if (body === '(' || body === '[' || body === '{') depth += 1;
      else if ((body === ')' || body === ']' || body === '}') && depth > 0) depth -= 1;
      lineStart = false;
    }
    pos = start + body.length;
  }
  if (firstToken >= 0 && (starts.length === 0 || firstToken < starts[0])) starts.unshift(firstToken);
  return starts.map((s, i) => ({ start: s, end: i + 1 < starts.length ? starts[i + 1] : text.length }));
}

function commandVerb(K, Bridge, syntax) {
  // `.create-or-alter function ...` parses as CustomCommand > CustomNode > identifier tokens.
  let command = null;
  walk(syntax, (n) => {
    if (!command && Bridge.is(n, K.Syntax.Command)) command = n;
  });
  if (!command) return { command: null, words: [] };
  const words = [];
  const custom = children(command).find((c) => Bridge.is(c, K.Syntax.CustomNode));
  for (const c of custom ? children(custom) : []) {
    if (!c.IsToken) break;
    words.push(String(c.Text).toLowerCase());
  }
  return { command, custom, words };
}

function describe(text) {
  const first = text.trim().split('\n', 1)[0];
  return first.length > 120 ? `${first.slice(0, 117)}...` : first;
}

function readSchema(K, file) {
  let schema;
  try {
    schema = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    throw new SetupError(`cannot read the schema ${file}: ${err.message}`);
  }
  if (typeof schema.database !== 'string' || !Array.isArray(schema.tables)) {
    throw new SetupError(`schema ${file}: needs "database" (string) and "tables" (list)`);
  }
  const S = K.Symbols;
  const columns = (owner, cols) => {
    if (!Array.isArray(cols) || cols.length === 0) throw new SetupError(`schema: ${owner} has no columns`);
    return cols.map((c) => {
      const type = S.ScalarTypes.GetSymbol(c.type);
      if (!type) throw new SetupError(`schema: ${owner}.${c.name} has unknown type ${JSON.stringify(c.type)}`);
      return new S.ColumnSymbol(c.name, type, null, null, null, null);
    });
  };
  const tables = schema.tables.map((t) => new S.TableSymbol.$ctor4(t.name, columns(t.name, t.columns)));
  const views = (schema.materializedViews || []).map(
    (v) => new S.MaterializedViewSymbol.$ctor2(v.name, columns(v.name, v.columns), null, null),
  );
  const declaredViews = new Map((schema.materializedViews || []).map((v) => [v.name, v.columns]));
  return { name: schema.database, members: [...tables, ...views], declaredViews };
}

function globalsFor(K, database, functions) {
  const S = K.Symbols;
  const db = new S.DatabaseSymbol.ctor(database.name, [...database.members, ...functions]);
  const cluster = new S.ClusterSymbol.ctor('auditlake.kusto.windows.net', [db]);
  return K.GlobalState.Default.WithCluster(cluster).WithDatabase(db);
}

function diagnostic(d, base, fallback, lines) {
  const start = d.HasLocation ? base + d.Start : fallback;
  return { code: d.Code, message: d.Message, start, length: d.HasLocation ? d.Length : 0, ...lines.at(start) };
}

function ownError(code, message, start, lines) {
  return { code, message, start, length: 0, ...lines.at(start) };
}

function sameColumns(actual, declared) {
  const key = (cols) => cols.map((c) => `${c.name}:${c.type}`).sort().join(', ');
  return { equal: key(actual) === key(declared), actual: key(actual), declared: key(declared) };
}

function main(argv) {
  if (argv.length < 2) throw new SetupError('usage: node kql_check.cjs SCHEMA.json FILE.kql [FILE.kql ...]');
  const { K, Bridge, version } = loadKusto();
  const database = readSchema(K, argv[0]);
  const plain = globalsFor(K, database, []);

  // Pass 1: cut every file into commands and collect the functions they define.
  const files = argv.slice(1).map((file) => {
    let text;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch (err) {
      throw new SetupError(`cannot read ${file}: ${err.message}`);
    }
    const lines = new Lines(text);
    const commands = splitCommands(K, text).map((b, index) => ({ index, ...b, text: text.slice(b.start, b.end) }));
    return { file, lines, commands };
  });
  const functions = [];
  const defined = new Map();
  const extra = new Map(); // command -> errors found before analysis
  for (const f of files) {
    for (const c of f.commands) {
      // Parsing a command takes the library about 0.25 s: only parse here what may define a function.
      if (!MAY_DEFINE_FUNCTION.test(c.text)) continue;
      const syntax = K.KustoCode.Parse(c.text, plain).Syntax;
      const { custom, words } = commandVerb(K, Bridge, syntax);
      if (!custom || words[1] !== 'function' || !['create', 'create-or-alter', 'alter'].includes(words[0])) continue;
      const parts = children(custom);
      const at = parts.findIndex((p) => Bridge.is(p, K.Syntax.FunctionDeclaration));
      if (at < 1 || !Bridge.is(parts[at - 1], K.Syntax.NameDeclaration)) continue;
      const name = parts[at - 1].SimpleName;
      const decl = parts[at];
      const slice = (n) => c.text.slice(n.TextStart, n.End);
      const where = `${f.file}:${f.lines.at(c.start).line}`;
      if (defined.has(name)) {
        const errors = extra.get(c) || [];
        errors.push(ownError('AL-DUPLICATE-FUNCTION', `function ${name} is also defined at ${defined.get(name)}`,
          c.start, f.lines));
        extra.set(c, errors);
        continue;
      }
      defined.set(name, where);
      functions.push(new K.Symbols.FunctionSymbol.$ctor16(name, slice(decl.Parameters), slice(decl.Body), null));
    }
  }

  // Pass 2: analyse every command against the database with all functions declared.
  const globals = globalsFor(K, database, functions);
  let errorCount = 0;
  const report = files.map((f) => ({
    file: f.file,
    commands: f.commands.map((c) => {
      const code = K.KustoCode.ParseAndAnalyze(c.text, globals, token(K));
      const errors = [...(extra.get(c) || [])];
      const warnings = [];
      for (const d of list(code.GetDiagnostics(token(K)))) {
        const entry = diagnostic(d, c.start, c.start, f.lines);
        if (d.Severity === 'Error') errors.push(entry);
        else if (d.Severity === 'Warning') warnings.push(entry);
      }
      walk(code.Syntax, (n) => {
        if (Bridge.is(n, K.Syntax.UnknownCommand)) {
          errors.push(ownError('AL-UNKNOWN-COMMAND', `not a command Kusto.Language knows: ${describe(c.text)}`,
            c.start + n.TextStart, f.lines));
        }
      });
      const { custom, words } = commandVerb(K, Bridge, code.Syntax);
      if (custom && words[1] === 'materialized-view' && ['create', 'create-or-alter', 'alter'].includes(words[0])) {
        const parts = children(custom);
        const name = parts.find((p) => Bridge.is(p, K.Syntax.NameDeclaration));
        const body = parts.find((p) => Bridge.is(p, K.Syntax.FunctionBody));
        const result = body && body.Expression && body.Expression.ResultType;
        if (name && result && Bridge.is(result, K.Symbols.TableSymbol)) {
          const declared = database.declaredViews.get(name.SimpleName);
          const actual = list(result.Columns).map((col) => ({ name: col.Name, type: col.Type.Name }));
          if (!declared) {
            errors.push(ownError('AL-VIEW-SCHEMA', `materialized view ${name.SimpleName} is not in the schema`,
              c.start + name.TextStart, f.lines));
          } else {
            const cmp = sameColumns(actual, declared);
            if (!cmp.equal) {
              errors.push(ownError('AL-VIEW-SCHEMA', `materialized view ${name.SimpleName} yields (${cmp.actual}) ` +
                `but the schema declares (${cmp.declared})`, c.start + name.TextStart, f.lines));
            }
          }
        }
      }
      errors.sort((a, b) => a.start - b.start);
      errorCount += errors.length;
      return { index: c.index, ...f.lines.at(c.start), start: c.start, kind: code.Kind, text: describe(c.text),
        errors, warnings };
    }),
  }));
  const out = { ok: errorCount === 0, errorCount, package: `${PACKAGE}@${version}`, files: report };
  process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
  return errorCount === 0 ? 0 : 1;
}

try {
  process.exitCode = main(process.argv.slice(2));
} catch (err) {
  // Never let Node print the source line of the minified library: it is megabytes long.
  const message = err instanceof SetupError ? err.message : (err && (err.stack || err.Message)) || String(err);
  process.stderr.write(`kql_check: ${message}\n`);
  process.exitCode = 2;
}
