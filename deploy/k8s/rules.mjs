// The fleet's own rules for a rendered overlay: what no schema can say. The facts they hold the
// manifests to are read from the repository (the binaries' flags and environment variables,
// the metrics the code registers, the service templates), so a change there shows up here.

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { isDeepStrictEqual } from "node:util";

/** terminationGracePeriodSeconds every worker needs: README.md, "Why 1200 seconds". */
export const WORKER_GRACE_S = 1200;

// ALLOWANCE, to be removed: the backlog metrics the KEDA triggers read, accepted while
// telemetry/src/metrics.rs does not register them yet. Only used for a name missing there.
const PENDING_METRICS = ["fleet_backlog_tasks", "fleet_backlog_drain_seconds"];

/** Where each fleet binary's command line is declared. */
const BINARIES = {
  scheduler: { source: "scheduler/src/bin/fleet-scheduler.rs", listenFlag: "--metrics-addr", listenEnv: "FLEET_METRICS_ADDR", listenKey: "metrics_addr" },
  worker: { source: "worker/src/bin/fleet-worker/cli.rs", listenFlag: "--metrics-addr", listenEnv: "FLEET_METRICS_ADDR", listenKey: "metrics_addr" },
  api: { source: "api/src/bin/fleet-api.rs", listenFlag: "--listen", listenEnv: "FLEET_API_ADDR", listenKey: "listen", listenDefault: "127.0.0.1:8080" },
};

/** Environment a container may set besides what its binary reads: the process's own. */
const PROCESS_ENV = ["HOME", "TMPDIR", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES"];

const PROMQL_WORDS = new Set(["and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on", "ignoring", "group_left", "group_right"]);

/** Options a binary takes from the file and the environment: `#[arg(long, env = "...")]` fields. */
function options(source) {
  const out = [];
  const attr = /#\[arg\(((?:[^()]|\([^()]*\))*)\)\]\s*(?:#\[[^\]]*\]\s*)*(?:pub\s+)?([a-z_][a-z0-9_]*)\s*:/g;
  for (const [, body, field] of source.matchAll(attr)) {
    const long = /\blong\b(?:\s*=\s*"([^"]+)")?/.exec(body);
    const env = /\benv\s*=\s*"([A-Z0-9_]+)"/.exec(body);
    if (env) out.push({ key: long ? (long[1] ?? field).replace(/-/g, "_") : null, env: env[1] });
  }
  return out;
}

/** Everything the rules compare against, read once from the repository at `repo`. */
export function readFacts(repo) {
  const read = (path) => readFileSync(join(repo, path), "utf8");
  const metricsSource = read("telemetry/src/metrics.rs");
  // Names given to prometheus' constructors, and to the worker's dcgm() helper (GPU readings
  // under dcgm-exporter's names).
  const registered = /(?:(?:Opts|HistogramOpts|IntCounter|IntGauge|Counter|Gauge|Histogram)::new|\bdcgm)\(\s*"([A-Za-z_:][A-Za-z0-9_:]*)"/g;
  const metrics = new Set();
  for (const [call, name] of metricsSource.matchAll(registered)) {
    metrics.add(name);
    if (call.startsWith("HistogramOpts")) for (const s of ["_bucket", "_sum", "_count"]) metrics.add(name + s);
  }
  const pending = PENDING_METRICS.filter((name) => !metrics.has(name));
  pending.forEach((name) => metrics.add(name));

  const shared = [...read("config/src/lib.rs").matchAll(/\("([a-z0-9_]+)",\s*"([A-Z0-9_]+)"\)/g)].map(([, key, env]) => ({ key, env }));
  const binaries = {};
  for (const [bin, spec] of Object.entries(BINARIES)) {
    const opts = options(read(spec.source)).concat(shared);
    binaries[bin] = {
      ...spec,
      keys: new Set(opts.map((o) => o.key).filter((k) => k && k !== "config")),
      env: new Set([...opts.map((o) => o.env), "FLEET_CONFIG", ...PROCESS_ENV]),
    };
  }
  const rabbit = read("deploy/templates/rabbitmq.conf");
  return {
    metrics,
    pending,
    binaries,
    definitions: JSON.parse(read("deploy/templates/definitions.json")),
    redisUsers: read("deploy/templates/redis.conf").split("\n").filter((l) => l.startsWith("user ")),
    // Files the dev overlay holds verbatim copies of (kustomize reads no file outside it), by
    // the name the copy has in its ConfigMap.
    copies: Object.fromEntries(["deploy/templates/ledger.sql", "deploy/docker/postgres-init.sh"]
      .map((path) => [path.split("/").pop(), { path, text: read(path) }])),
    rabbitLimits: settings(rabbit, ["consumer_timeout", "max_message_size"]),
  };
}

/** `key = value` lines of a RabbitMQ config, for the keys asked. */
function settings(text, keys) {
  const out = {};
  for (const line of text.split("\n")) {
    const m = /^\s*([a-z_.]+)\s*=\s*(\S+)/.exec(line);
    if (m && keys.includes(m[1])) out[m[1]] = m[2];
  }
  return out;
}

/** Sections and their keys of a TOML file (enough for fleet.toml: flat `key = value`). */
function tomlSections(text) {
  const sections = {};
  let current = "";
  for (const raw of text.split("\n")) {
    const line = raw.replace(/#.*$/, "").trim();
    const head = /^\[([^\]]+)\]$/.exec(line);
    if (head) current = head[1].trim();
    const kv = /^([A-Za-z0-9_-]+)\s*=\s*(.*)$/.exec(line);
    if (kv) (sections[current] ??= {})[kv[1]] = kv[2].replace(/^"(.*)"$/, "$1");
  }
  return sections;
}

/** Metric names in a PromQL expression: identifiers that are not functions, keywords or labels. */
export function metricNames(query) {
  const q = query
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'/g, '""')
    .replace(/\{[^}]*\}/g, " ")
    .replace(/\[[^\]]*\]/g, " ")
    .replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, " ");
  const names = [];
  for (const m of q.matchAll(/(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*/g)) {
    if (q.slice(m.index + m[0].length).trimStart().startsWith("(")) continue;
    if (!PROMQL_WORDS.has(m[0].toLowerCase())) names.push(m[0]);
  }
  return names;
}

const podSpec = (doc) =>
  doc.kind === "CronJob" ? doc.spec?.jobTemplate?.spec?.template?.spec
  : ["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"].includes(doc.kind) ? doc.spec?.template?.spec
  : doc.kind === "Pod" ? doc.spec : undefined;
const isWorkload = (doc) => doc.kind === "Deployment" || doc.kind === "StatefulSet";
const fleetBinary = (image) => /(?:^|\/)gpu-fleet\/(scheduler|worker|api)(?::|@|$)/.exec(image ?? "")?.[1];
const idOf = (doc) => `${doc.kind}/${doc.metadata?.name}`;
const sameNs = (a, b) => (a.metadata?.namespace ?? "") === (b.metadata?.namespace ?? "");

/** Whether a label selector (matchLabels, matchExpressions) selects `labels`. */
function selects(selector, labels = {}) {
  if (!selector) return false;
  const exprs = selector.matchExpressions ?? [];
  if (!selector.matchLabels && exprs.length === 0) return false;
  for (const [k, v] of Object.entries(selector.matchLabels ?? {})) if (labels[k] !== v) return false;
  return exprs.every(({ key, operator, values = [] }) =>
    operator === "In" ? values.includes(labels[key])
    : operator === "NotIn" ? !values.includes(labels[key])
    : operator === "Exists" ? key in labels
    : !(key in labels));
}

/** A container's port: a number, or the number of its named port. */
function portNumber(container, port) {
  if (typeof port === "number") return port;
  if (/^\d+$/.test(String(port))) return Number(port);
  return container.ports?.find((p) => p.name === port)?.containerPort;
}

/** The value of `--flag V` or `--flag=V` in a command line. */
function flagValue(argv, flag) {
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === flag) return argv[i + 1];
    if (argv[i].startsWith(flag + "=")) return argv[i].slice(flag.length + 1);
  }
  return undefined;
}

/** Where a fleet binary serves /livez and /readyz: flag, then environment, then fleet.toml. */
function listenAddress(spec, bin, container, config) {
  const argv = [...(container.command ?? []), ...(container.args ?? [])].map(String);
  const env = container.env?.find((e) => e.name === spec.listenEnv)?.value;
  return flagValue(argv, spec.listenFlag) ?? env ?? config?.[bin]?.[spec.listenKey] ?? spec.listenDefault;
}

/**
 * Findings for one render: [{ doc, reason }]. `name` is the render's overlay ("base" holds no
 * Secret); `facts` come from readFacts.
 */
export function checkRender(name, docs, facts) {
  const findings = [];
  const add = (doc, reason) => findings.push({ doc: idOf(doc), reason });
  const workloads = docs.filter(isWorkload);
  const configMaps = docs.filter((d) => d.kind === "ConfigMap");
  const secrets = docs.filter((d) => d.kind === "Secret");
  const fleetToml = configMaps.find((c) => typeof c.data?.["fleet.toml"] === "string");
  const config = fleetToml ? tomlSections(fleetToml.data["fleet.toml"]) : undefined;

  if (name === "base") for (const s of secrets) add(s, "a Secret in base: base references Secrets by name and holds no values");

  for (const doc of docs) {
    const pod = podSpec(doc);
    if (!pod) continue;
    for (const c of [...(pod.initContainers ?? []), ...(pod.containers ?? [])]) {
      const where = `container ${c.name}`;
      for (const e of c.env ?? []) {
        if (typeof e.value === "string" && /^[a-z][a-z0-9+.-]*:\/\/[^/@\s:]+:[^/@\s]+@/i.test(e.value))
          add(doc, `${where}: ${e.name} holds a password in the manifest; take it from a Secret`);
      }
      checkReferences(doc, pod, c, where, { configMaps, secrets, add });
      const bin = fleetBinary(c.image);
      if (bin && isWorkload(doc)) checkFleetContainer(doc, pod, c, where, bin, facts.binaries[bin], config, add);
    }
  }

  if (config) {
    for (const [section, keys] of Object.entries(config)) {
      const spec = facts.binaries[section];
      if (!spec) continue;
      for (const key of Object.keys(keys))
        if (!spec.keys.has(key)) add(fleetToml, `fleet.toml [${section}] ${key}: fleet-${section} has no such option (it would refuse to start)`);
    }
  }

  checkScaledObjects(docs, workloads, facts, add);
  for (const pdb of docs.filter((d) => d.kind === "PodDisruptionBudget")) {
    if (!workloads.some((w) => sameNs(w, pdb) && selects(pdb.spec?.selector, w.spec?.template?.metadata?.labels)))
      add(pdb, "its selector matches the pods of no Deployment or StatefulSet");
  }
  for (const svc of docs.filter((d) => d.kind === "Service" && d.spec?.selector)) {
    const backing = workloads.filter((w) => sameNs(w, svc) && selects({ matchLabels: svc.spec.selector }, w.spec?.template?.metadata?.labels));
    if (backing.length === 0) add(svc, "its selector matches the pods of no Deployment or StatefulSet");
    for (const p of svc.spec.ports ?? []) {
      const target = p.targetPort ?? p.port;
      const found = backing.some((w) => w.spec.template.spec.containers.some((c) =>
        c.ports?.some((cp) => cp.name === target || cp.containerPort === Number(target))));
      if (backing.length && !found) add(svc, `port ${p.name ?? p.port}: targetPort ${target} is no container port of the pods it selects`);
    }
  }
  checkTemplateCopies(configMaps, facts, add);
  return findings;
}

/** Probes, grace period, security and environment of one fleet binary's container. */
function checkFleetContainer(doc, pod, c, where, bin, spec, config, add) {
  const address = listenAddress(spec, bin, c, config);
  const m = address && /^(.*):(\d+)$/.exec(address);
  if (!m) add(doc, `${where}: fleet-${bin} serves /livez and /readyz only with ${spec.listenFlag} (none set)`);
  else if (/^(127\.|localhost$|\[::1\]$)/.test(m[1])) add(doc, `${where}: fleet-${bin} listens on ${address}, which the kubelet's probes cannot reach`);
  const served = m ? Number(m[2]) : undefined;
  for (const [probe, path] of [["livenessProbe", "/livez"], ["readinessProbe", "/readyz"], ["startupProbe", null]]) {
    const p = c[probe];
    if (!p) {
      if (path) add(doc, `${where}: no ${probe} (fleet-${bin} serves ${path})`);
      continue;
    }
    if (!p.httpGet) { add(doc, `${where}: ${probe} is not an HTTP GET of ${path ?? "/livez"}`); continue; }
    const want = path ? [path] : ["/livez", "/readyz"];
    if (!want.includes(p.httpGet.path)) add(doc, `${where}: ${probe} path ${p.httpGet.path} is not ${want.join(" or ")}`);
    const port = portNumber(c, p.httpGet.port);
    if (served !== undefined && port !== served)
      add(doc, `${where}: ${probe} port ${p.httpGet.port} is not ${served}, where fleet-${bin} serves (${address})`);
  }
  if (bin === "worker" && (pod.terminationGracePeriodSeconds ?? 30) < WORKER_GRACE_S)
    add(doc, `terminationGracePeriodSeconds ${pod.terminationGracePeriodSeconds ?? "30 (the default)"} is under ${WORKER_GRACE_S}: the longest batch task would be killed mid-drain`);

  const sc = c.securityContext ?? {};
  if (!(sc.runAsNonRoot ?? pod.securityContext?.runAsNonRoot)) add(doc, `${where}: runAsNonRoot is not set`);
  if (sc.allowPrivilegeEscalation !== false) add(doc, `${where}: allowPrivilegeEscalation is not false`);
  if (!sc.capabilities?.drop?.includes("ALL")) add(doc, `${where}: capabilities do not drop ALL`);
  if (sc.readOnlyRootFilesystem !== true) add(doc, `${where}: the root filesystem is not read-only`);
  if (sc.readOnlyRootFilesystem === true && bin === "worker") {
    const argv = [...(c.command ?? []), ...(c.args ?? [])].map(String);
    const models = flagValue(argv, "--models") ?? c.env?.find((e) => e.name === "FLEET_MODEL_DIR")?.value;
    for (const [what, dir] of [["the model cache (FLEET_MODEL_DIR)", models], ["fine-tunes' work folders", "/tmp"]]) {
      if (!dir) { add(doc, `${where}: no model cache: set FLEET_MODEL_DIR`); continue; }
      const mount = (c.volumeMounts ?? []).find((v) => dir === v.mountPath || dir.startsWith(v.mountPath.replace(/\/$/, "") + "/"));
      if (!mount || mount.readOnly) add(doc, `${where}: ${what} ${dir} is on no writable volume, and the root is read-only`);
    }
  }
  for (const e of c.env ?? []) {
    if (!spec.env.has(e.name)) add(doc, `${where}: sets ${e.name}, which fleet-${bin} does not read`);
  }
}

/** Secrets and ConfigMaps a container names: present with their keys, or (Secrets) listed. */
function checkReferences(doc, pod, c, where, { configMaps, secrets, add }) {
  const refs = [];
  for (const e of c.env ?? []) {
    const s = e.valueFrom?.secretKeyRef, m = e.valueFrom?.configMapKeyRef;
    if (s) refs.push(["Secret", s.name, s.key, s.optional]);
    if (m) refs.push(["ConfigMap", m.name, m.key, m.optional]);
  }
  for (const f of c.envFrom ?? []) {
    if (f.secretRef) refs.push(["Secret", f.secretRef.name, null, f.secretRef.optional]);
    if (f.configMapRef) refs.push(["ConfigMap", f.configMapRef.name, null, f.configMapRef.optional]);
  }
  const mounted = new Set((c.volumeMounts ?? []).map((v) => v.name));
  for (const v of pod.volumes ?? []) {
    if (!mounted.has(v.name)) continue;
    if (v.configMap) for (const key of v.configMap.items?.map((i) => i.key) ?? [null]) refs.push(["ConfigMap", v.configMap.name, key, v.configMap.optional]);
    if (v.secret) for (const key of v.secret.items?.map((i) => i.key) ?? [null]) refs.push(["Secret", v.secret.secretName, key, v.secret.optional]);
  }
  for (const [kind, name, key, optional] of refs) {
    // Secrets of base and gpu-pools live in the cluster, not in the render (README.md).
    if (optional || (kind === "Secret" && secrets.length === 0)) continue;
    const target = (kind === "Secret" ? secrets : configMaps).find((d) => d.metadata?.name === name && sameNs(d, doc));
    if (!target) add(doc, `${where}: ${kind} ${name} is not in this render`);
    else if (key && !(key in (target.data ?? {})) && !(key in (target.stringData ?? {})))
      add(doc, `${where}: ${kind} ${name} has no key ${key}`);
  }
}

/** Targets, queries and server of every KEDA ScaledObject. */
function checkScaledObjects(docs, workloads, facts, add) {
  const servers = new Set();
  for (const so of docs.filter((d) => d.kind === "ScaledObject")) {
    const ref = so.spec?.scaleTargetRef ?? {};
    const kind = ref.kind ?? "Deployment";
    if (!workloads.some((w) => w.kind === kind && w.metadata?.name === ref.name && sameNs(w, so)))
      add(so, `scaleTargetRef names ${kind} ${ref.name}, which is not in this render`);
    for (const [i, t] of (so.spec?.triggers ?? []).entries()) {
      const label = `trigger ${t.name ?? i}`;
      if (t.type !== "prometheus") continue;
      const md = t.metadata ?? {};
      for (const k of ["serverAddress", "query", "threshold"]) if (!md[k]) add(so, `${label}: no ${k}`);
      if (md.threshold && !(Number(md.threshold) > 0)) add(so, `${label}: threshold ${md.threshold} is not a positive number`);
      if (md.serverAddress) servers.add(md.serverAddress);
      for (const metric of metricNames(md.query ?? ""))
        if (!facts.metrics.has(metric)) add(so, `${label}: ${metric} is not a metric the fleet exports (telemetry/src/metrics.rs)`);
    }
  }
  if (servers.size > 1) add({ kind: "ScaledObject", metadata: { name: "*" } }, `triggers ask different Prometheus servers: ${[...servers].join(", ")}`);
}

/** The dev overlay's copies of the service templates say what the templates say. */
function checkTemplateCopies(configMaps, facts, add) {
  for (const cm of configMaps) {
    const data = cm.data ?? {};
    if ("definitions.json" in data && !isDeepStrictEqual(JSON.parse(data["definitions.json"]), facts.definitions))
      add(cm, "definitions.json differs from deploy/templates/definitions.json");
    if ("redis.conf" in data) {
      const users = data["redis.conf"].split("\n").filter((l) => l.startsWith("user "));
      if (!isDeepStrictEqual(users, facts.redisUsers)) add(cm, "redis.conf's ACL users differ from deploy/templates/redis.conf's");
    }
    for (const [file, original] of Object.entries(facts.copies)) {
      if (file in data && data[file] !== original.text) add(cm, `${file} differs from ${original.path}`);
    }
    if ("rabbitmq.conf" in data) {
      const got = settings(data["rabbitmq.conf"], Object.keys(facts.rabbitLimits));
      for (const [k, v] of Object.entries(facts.rabbitLimits))
        if (got[k] !== v) add(cm, `rabbitmq.conf ${k} = ${got[k] ?? "(unset)"}, deploy/templates/rabbitmq.conf says ${v}`);
    }
  }
}

/** Secrets (and keys) that containers of a render reference but the render does not hold. */
export function externalSecrets(docs) {
  if (docs.some((d) => d.kind === "Secret")) return {};
  const out = {};
  for (const doc of docs) {
    const pod = podSpec(doc);
    for (const c of pod?.containers ?? []) {
      for (const e of c.env ?? []) {
        const s = e.valueFrom?.secretKeyRef;
        if (s) (out[s.name] ??= new Set()).add(s.key);
      }
      // Secrets mounted as files: their items' keys, or every key when no items are named.
      const mounted = new Set((c.volumeMounts ?? []).map((v) => v.name));
      for (const v of pod.volumes ?? []) {
        if (!v.secret || !mounted.has(v.name)) continue;
        const keys = (out[v.secret.secretName] ??= new Set());
        for (const key of v.secret.items?.map((i) => i.key) ?? ["every key"]) keys.add(key);
      }
    }
  }
  return out;
}
