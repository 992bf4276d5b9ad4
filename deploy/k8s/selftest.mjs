// The checks, checked: each case breaks a copy of a render in memory the way a careless edit
// would, and expects a finding that says so. check.sh runs it after every validation, so a
// rule that silently stops firing fails the check like a broken manifest does.

const find = (docs, kind, name) => docs.find((d) => d.kind === kind && (name === undefined || d.metadata.name.startsWith(name)));
const container = (docs, name) => find(docs, "Deployment", name).spec.template.spec.containers[0];

const CASES = [
  ["a probe path the binary does not serve", "gpu-pools", /readinessProbe path \/ready is not \/readyz/,
    (d) => { container(d, "fleet-worker").readinessProbe.httpGet.path = "/ready"; }],
  ["a probe on another port than --metrics-addr", "base", /livenessProbe port 9999 is not 9460/,
    (d) => { container(d, "fleet-scheduler").livenessProbe.httpGet.port = 9999; }],
  ["an API listening on loopback", "base", /listens on 127\.0\.0\.1:8080/,
    (d) => { container(d, "fleet-api").args = ["serve"]; }],
  ["a misspelt field", "dev", /unknown field spec\.template\.spec\.containers\.0\.imagePullPolcy/,
    (d) => { container(d, "fleet-worker").imagePullPolcy = "Always"; }],
  ["a value of the wrong type", "dev", /schema: .*replicas/,
    (d) => { find(d, "Deployment", "fleet-api").spec.replicas = "two"; }],
  ["a kind no schema knows", "base", /no schema for example\.com\/v1 Widget/,
    (d) => { d.push({ apiVersion: "example.com/v1", kind: "Widget", metadata: { name: "w" } }); }],
  ["a ScaledObject whose Deployment is missing", "gpu-pools", /scaleTargetRef names Deployment fleet-worker-gone/,
    (d) => { find(d, "ScaledObject", "fleet-worker-whole").spec.scaleTargetRef.name = "fleet-worker-gone"; }],
  ["a query on a metric the fleet does not export", "gpu-pools", /fleet_backlog_taskz is not a metric/,
    (d) => { find(d, "ScaledObject").spec.triggers[0].metadata.query = "sum(fleet_backlog_taskz)"; }],
  ["a worker killed before its drain ends", "gpu-pools", /terminationGracePeriodSeconds 30 is under/,
    (d) => { find(d, "Deployment", "fleet-worker").spec.template.spec.terminationGracePeriodSeconds = 30; }],
  ["a disruption budget that selects nothing", "base", /PodDisruptionBudget\/fleet-api: its selector matches/,
    (d) => { find(d, "PodDisruptionBudget", "fleet-api").spec.selector.matchLabels["app.kubernetes.io/name"] = "fleet-apy"; }],
  ["a Secret in base", "base", /a Secret in base/,
    (d) => { d.push({ apiVersion: "v1", kind: "Secret", metadata: { name: "s" }, data: {} }); }],
  ["a variable the binary does not read", "base", /sets FLEET_SCHEDULER_AMQP_URL, which fleet-scheduler does not read/,
    (d) => { container(d, "fleet-scheduler").env.push({ name: "FLEET_SCHEDULER_AMQP_URL", value: "x" }); }],
  ["a password in a manifest", "base", /holds a password in the manifest/,
    (d) => { container(d, "fleet-worker").env.push({ name: "FLEET_AMQP_URL", value: "amqp://u:p@h:5672/fleet" }); }],
  ["a key fleet.toml's binary lacks", "base", /\[scheduler\] shard_sise: fleet-scheduler has no such option/,
    (d) => { const c = find(d, "ConfigMap", "fleet-config"); c.data["fleet.toml"] = c.data["fleet.toml"].replace("[scheduler]\n", "[scheduler]\nshard_sise = 8\n"); }],
  ["a model cache on the read-only root", "gpu-pools", /model cache .* is on no writable volume/,
    (d) => { const c = container(d, "fleet-worker"); c.volumeMounts = c.volumeMounts.filter((m) => m.name !== "models"); }],
  ["a Secret key the dev overlay lacks", "dev", /Secret fleet-worker-credentials has no key FLEET_WORKER_S3_KEY/,
    (d) => { delete find(d, "Secret", "fleet-worker-credentials").data.FLEET_WORKER_S3_KEY; }],
  ["a mounted Secret's file the dev overlay lacks", "dev", /Secret fleet-worker-signing has no key key\.pem/,
    (d) => { delete find(d, "Secret", "fleet-worker-signing").data["key.pem"]; }],
  ["a broker definitions copy that drifted", "dev", /definitions\.json differs/,
    (d) => { const c = find(d, "ConfigMap", "rabbitmq-config"); c.data["definitions.json"] = c.data["definitions.json"].replace('"fleet.tasks.batch"', '"fleet.tasks.bulk"'); }],
  ["a ledger schema copy that drifted", "dev", /ledger\.sql differs from deploy\/templates\/ledger\.sql/,
    (d) => { const c = find(d, "ConfigMap", "postgres-config"); c.data["ledger.sql"] = c.data["ledger.sql"].replace("TO fleet_ledger_reader", "TO PUBLIC"); }],
];

/** Runs every case on the render it names; true if each was caught. */
export async function selfTest(renders, facts, findingsFor) {
  let missed = 0;
  for (const [what, overlay, expect, mutate] of CASES) {
    const render = renders.find((r) => r.name === overlay || r.name.endsWith("/" + overlay));
    if (!render) { console.error(`self-test: no render named ${overlay}`); missed++; continue; }
    const docs = structuredClone(render.docs);
    mutate(docs);
    const reasons = (await findingsFor(render.name, docs, facts)).map((f) => `${f.doc}: ${f.reason}`);
    const hit = reasons.find((r) => expect.test(r));
    if (hit) console.log(`caught  ${what} (${render.name}): ${hit}`);
    else { console.error(`MISSED  ${what} (${render.name}); found instead: ${reasons.join(" | ") || "nothing"}`); missed++; }
  }
  console.log(`self-test: ${CASES.length - missed} passed, ${missed} failed`);
  return missed === 0;
}
