// Validates rendered kustomize output (check.sh renders it): every document against the
// Kubernetes OpenAPI schema (kubernetes-models) or KEDA's CRD schema (@kubernetes-models/keda),
// unknown fields refused, then the fleet's own rules (rules.mjs). Prints one line per finding,
// naming the overlay, the document and the reason, and exits 1 if there is any.
//
//   node validate.mjs --loader CACHE/loader.mjs --repo ROOT NAME=FILE [--same-as NAME=FILE]...
//   node validate.mjs ... --self-test NAME=FILE...   breaks copies of the renders in memory
//                                                    and fails unless each break is found
//
// --loader is a module in the cache folder where check.sh installed the packages: imports go
// through it, so this folder needs no node_modules. --same-as is the same overlay rendered by
// a second kubectl; the two must hold the same objects.

import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import { isDeepStrictEqual } from "node:util";
import { checkRender, externalSecrets, readFacts } from "./rules.mjs";
import { selfTest } from "./selftest.mjs";

function parseArgs(argv) {
  const out = { renders: [], sameAs: [], selfTest: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--loader" || a === "--repo") out[a.slice(2)] = argv[++i];
    else if (a === "--same-as") out.sameAs.push(argv[++i]);
    else if (a === "--self-test") out.selfTest = true;
    else out.renders.push(a);
  }
  const pair = (s) => {
    const at = s.indexOf("=");
    if (at < 1) throw new Error(`expected NAME=FILE, got ${s}`);
    return { name: s.slice(0, at), file: s.slice(at + 1) };
  };
  if (!out.loader || !out.repo || out.renders.length === 0) throw new Error("usage: validate.mjs --loader FILE --repo DIR NAME=FILE...");
  return { ...out, renders: out.renders.map(pair), sameAs: out.sameAs.map(pair) };
}

const { load } = await import(pathToFileURL(parseArgs(process.argv.slice(2)).loader).href);
const yaml = await load("js-yaml");

/** The YAML stream as Kubernetes reads it (YAML 1.1: `on` and `yes` are booleans there). */
const parse = (file) => yaml.loadAll(readFileSync(file, "utf8"), { schema: yaml.YAML11_SCHEMA }).filter((d) => d != null);

const models = new Map();
/** The model class for an apiVersion and kind, or undefined when no installed package has one. */
async function modelFor(apiVersion, kind) {
  const module = apiVersion.split("/")[0].endsWith("keda.sh") ? `@kubernetes-models/keda/${apiVersion}` : `kubernetes-models/${apiVersion}`;
  if (!models.has(module)) models.set(module, await load(module).catch(() => ({})));
  return Object.values(models.get(module)).find((c) => typeof c === "function" && c.apiVersion === apiVersion && c.kind === kind);
}

/**
 * Runs the model's schema check on a proxy of `doc` that records which keys the check reads.
 * The generated checks read every property their schema declares and walk every key of a map,
 * so a key that was never read is a field the schema does not have.
 */
function schemaFindings(model, doc) {
  const seen = [];
  const proxies = new WeakMap();
  const track = (value, path) => {
    if (value === null || typeof value !== "object") return value;
    // One proxy per object: the check may touch a property several times.
    if (proxies.has(value)) return proxies.get(value);
    const record = { value, path, read: new Set(), walked: false };
    seen.push(record);
    const proxy = new Proxy(value, {
      get(target, key, receiver) {
        const v = Reflect.get(target, key, receiver);
        if (typeof key !== "string" || !Object.hasOwn(target, key)) return v;
        record.read.add(key);
        return track(v, `${path}.${key}`);
      },
      ownKeys(target) {
        record.walked = true;
        return Reflect.ownKeys(target);
      },
    });
    proxies.set(value, proxy);
    return proxy;
  };
  try {
    model.prototype.validate.call(track(doc, ""));
  } catch (e) {
    return [`schema: ${e.message}`];
  }
  const unknown = [];
  for (const { value, path, read, walked } of seen) {
    if (Array.isArray(value) || walked) continue;
    for (const key of Object.keys(value)) if (!read.has(key)) unknown.push(`${path}.${key}`.replace(/^\./, ""));
  }
  return unknown.map((p) => `unknown field ${p}`);
}

/**
 * A Secret's data as the API server reads it. kustomize 5 folds long base64 values over
 * several lines; Go's base64 decoder skips line breaks, the schema's "byte" format does not.
 */
function unfolded(doc) {
  if (doc.kind !== "Secret" || !doc.data) return doc;
  return { ...doc, data: Object.fromEntries(Object.entries(doc.data).map(([k, v]) => [k, typeof v === "string" ? v.replace(/[\r\n]/g, "") : v])) };
}

/** Every finding for one render: schema and fields per document, then the fleet's rules. */
export async function findingsFor(name, docs, facts) {
  const out = [];
  for (const doc of docs) {
    const id = `${doc.kind}/${doc.metadata?.name}`;
    const model = doc.apiVersion && doc.kind ? await modelFor(doc.apiVersion, doc.kind) : undefined;
    if (!model) out.push({ doc: id, reason: `no schema for ${doc.apiVersion} ${doc.kind}: an unknown kind, or a typo` });
    else for (const reason of schemaFindings(model, unfolded(doc))) out.push({ doc: id, reason });
  }
  return out.concat(checkRender(name, docs, facts));
}

/** Secret data as bytes: kubectl 1.20 writes base64 on one line, kustomize 5 folds it. */
function normalise(doc) {
  if (doc.kind !== "Secret" || !doc.data) return doc;
  const data = Object.fromEntries(Object.entries(doc.data).map(([k, v]) => [k, Buffer.from(String(v).replace(/\s+/g, ""), "base64").toString("hex")]));
  return { ...doc, data };
}

/** Differences between two renders of one overlay, object by object. */
function compare(a, b) {
  const key = (d) => `${d.kind}/${d.metadata?.namespace ?? ""}/${d.metadata?.name}`;
  const left = new Map(a.map((d) => [key(d), normalise(d)]));
  const right = new Map(b.map((d) => [key(d), normalise(d)]));
  const out = [];
  for (const [k, d] of left) {
    if (!right.has(k)) out.push(`${k} only in the first render`);
    else if (!isDeepStrictEqual(d, right.get(k))) out.push(`${k} differs between the renders`);
  }
  for (const k of right.keys()) if (!left.has(k)) out.push(`${k} only in the second render`);
  return out;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const facts = readFacts(args.repo);
  const renders = args.renders.map(({ name, file }) => ({ name, docs: parse(file) }));
  if (args.selfTest) process.exit((await selfTest(renders, facts, findingsFor)) ? 0 : 1);

  let failed = 0;
  for (const { name, docs } of renders) {
    const findings = await findingsFor(name, docs, facts);
    for (const f of findings) console.error(`FAIL ${name}: ${f.doc}: ${f.reason}`);
    failed += findings.length;
    const external = externalSecrets(docs);
    const expects = Object.entries(external).map(([s, keys]) => `${s} (${[...keys].join(", ")})`);
    console.log(`${findings.length ? "FAIL" : "ok  "} ${name}: ${docs.length} documents` + (expects.length ? `; expects Secrets ${expects.join("; ")}` : ""));
  }
  for (const { name, file } of args.sameAs) {
    const first = renders.find((r) => r.name === name);
    if (!first) throw new Error(`--same-as ${name}: no render of that name`);
    const diffs = compare(first.docs, parse(file));
    for (const d of diffs) console.error(`FAIL ${name}: the two kubectl renders differ: ${d}`);
    failed += diffs.length;
    if (!diffs.length) console.log(`ok   ${name}: both kubectl renders hold the same objects`);
  }
  if (facts.pending.length) console.log(`note: accepted without registration in telemetry/src/metrics.rs: ${facts.pending.join(", ")}`);
  process.exit(failed ? 1 : 0);
}

await main();
