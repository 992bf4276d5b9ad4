//! The web dashboard under `/ui`: pages rendered on the server from the same records the API
//! serves, read-only. A tenant sees its backlog, its jobs (progress, failures with reasons,
//! a contact sheet of results), its fine-tunes (figures and loss and learning-rate curves)
//! and its models with their lineage; an operator also sees the workers with their devices
//! and live NVML readings, and every tenant's backlog and jobs.
//!
//! Sign-in takes an API token once (`/ui/login`) and keeps it in an HttpOnly, SameSite=Strict
//! cookie scoped to `/ui`; every page checks it again, so a revoked token signs the browser
//! out on its next page. Pages that change while watched refresh themselves every 5 s.

use std::fmt::Write as _;

use axum::extract::{Path, State};
use axum::http::header::{COOKIE, LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Form, Router};
use fleet_protocol::heartbeat::Heartbeat;
use fleet_protocol::keys::{results_prefix, TenantId};
use fleet_store::registry::{list_models, Scope};
use fleet_store::ObjectStore;
use serde::Deserialize;

use crate::jobs::{view, JobView};
use crate::problem::Problem;
use crate::tokens::{Role, TokenInfo};
use crate::AppState;

/// The cookie holding the signed-in token.
const SESSION: &str = "fleet_session";
/// Jobs listed per page.
const JOBS_SHOWN: usize = 50;
/// Results shown on a contact sheet.
const SHEET: usize = 48;

/// The dashboard's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", get(logout))
        .route("/ui", get(overview))
        .route("/ui/jobs", get(jobs))
        .route("/ui/jobs/{tenant}/{id}", get(job))
        .route("/ui/fine-tunes", get(fine_tunes))
        .route("/ui/models", get(models))
}

/// Who is looking, from the session cookie.
struct Viewer(TokenInfo);

impl Viewer {
    fn operator(&self) -> bool {
        self.0.role == Role::Operator
    }

    /// The tenants whose records this viewer may read: its own, or every one for an operator.
    async fn tenants(&self, state: &AppState) -> Result<Vec<TenantId>, Problem> {
        match (&self.0.role, &self.0.tenant) {
            (Role::Operator, _) => Ok(state.jobs.tenants().await?),
            (Role::Tenant, Some(t)) => Ok(TenantId::new(t).into_iter().collect()),
            (Role::Tenant, None) => Ok(Vec::new()),
        }
    }

    fn may_read(&self, tenant: &str) -> bool {
        self.operator() || self.0.tenant.as_deref() == Some(tenant)
    }

    fn tenant(&self) -> Option<TenantId> {
        self.0.tenant.as_deref().and_then(|t| TenantId::new(t).ok())
    }
}

/// The viewer, or a redirect to the sign-in page.
async fn viewer(state: &AppState, headers: &HeaderMap) -> Result<Viewer, Response> {
    let token = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION)
        .map(|(_, value)| value.to_string());
    let Some(token) = token else { return Err(to_login()) };
    match state.tokens.verify(&token).await {
        Ok(Some(info)) => Ok(Viewer(info)),
        Ok(None) => Err(to_login()),
        Err(e) => Err(Problem::from(e).into_response()),
    }
}

fn to_login() -> Response {
    (StatusCode::SEE_OTHER, [(LOCATION, "/ui/login")]).into_response()
}

/// Escapes text for HTML.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A whole page: the navigation, then `body`; `refresh` reloads it every 5 s.
fn page(title: &str, viewer: Option<&Viewer>, refresh: bool, body: &str) -> Html<String> {
    let nav = match viewer {
        Some(v) => {
            let who = match (&v.0.role, &v.0.tenant) {
                (Role::Operator, _) => format!("operator ({})", esc(&v.0.name)),
                (Role::Tenant, t) => format!("tenant {} ({})", esc(t.as_deref().unwrap_or("?")), esc(&v.0.name)),
            };
            format!(
                "<nav><a href=\"/ui\">Overview</a> <a href=\"/ui/jobs\">Jobs</a> <a href=\"/ui/fine-tunes\">Fine-tunes</a> \
                 <a href=\"/ui/models\">Models</a> <span class=\"who\">{who}</span> <a href=\"/ui/logout\">Sign out</a></nav>"
            )
        }
        None => String::new(),
    };
    let refresh = if refresh { "<meta http-equiv=\"refresh\" content=\"5\">" } else { "" };
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">{refresh}<title>{title} · gpu-fleet</title>\
         <style>{STYLE}</style></head><body>{nav}<main><h1>{title}</h1>{body}</main></body></html>",
        title = esc(title)
    ))
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}\
nav{background:#1d2330;padding:10px 16px}nav a{color:#fff;margin-right:14px;text-decoration:none}\
nav .who{color:#aab;margin:0 14px 0 20px}main{padding:8px 20px}\
table{border-collapse:collapse;background:#fff;margin:8px 0 18px}td,th{border:1px solid #dde;padding:4px 8px;text-align:left}\
th{background:#eef0f4}progress{width:140px}.sheet{display:flex;flex-wrap:wrap;gap:8px}\
.sheet figure{margin:0;background:#fff;border:1px solid #dde;padding:4px}.sheet img{width:160px;height:120px;object-fit:contain;\
background:repeating-conic-gradient(#eee 0 25%,#fff 0 50%) 0 0/16px 16px}.sheet figcaption{font-size:11px;max-width:160px;\
overflow:hidden;text-overflow:ellipsis;white-space:nowrap}.bad{color:#b00020}.muted{color:#778}\
form input{width:420px;padding:6px}form button{padding:6px 14px}";

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login_page() -> Html<String> {
    page("Sign in", None, false, &login_form(""))
}

fn login_form(error: &str) -> String {
    let error = if error.is_empty() { String::new() } else { format!("<p class=\"bad\">{}</p>", esc(error)) };
    format!(
        "{error}<form method=\"post\" action=\"/ui/login\"><p><label>API token<br>\
         <input name=\"token\" type=\"password\" autocomplete=\"off\" placeholder=\"fleet_...\"></label></p>\
         <p><button type=\"submit\">Sign in</button></p></form>\
         <p class=\"muted\">The token an operator gave you (<code>fleet-api token create</code>).</p>"
    )
}

async fn login(State(state): State<AppState>, Form(form): Form<LoginForm>) -> Response {
    let token = form.token.trim();
    match state.tokens.verify(token).await {
        Ok(Some(_)) => {
            let cookie = format!("{SESSION}={token}; Path=/ui; HttpOnly; SameSite=Strict");
            (StatusCode::SEE_OTHER, [(SET_COOKIE, cookie), (LOCATION, "/ui".to_string())]).into_response()
        }
        Ok(None) => {
            (StatusCode::UNAUTHORIZED, page("Sign in", None, false, &login_form("That token is unknown or revoked.")))
                .into_response()
        }
        Err(e) => Problem::from(e).into_response(),
    }
}

async fn logout() -> Response {
    let cookie = format!("{SESSION}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0");
    (StatusCode::SEE_OTHER, [(SET_COOKIE, cookie), (LOCATION, "/ui/login".to_string())]).into_response()
}

/// Workers (operators), the backlog, the latest jobs.
async fn overview(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let viewer = match viewer(&state, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    match overview_body(&state, &viewer).await {
        Ok(body) => page("Overview", Some(&viewer), true, &body).into_response(),
        Err(p) => p.into_response(),
    }
}

async fn overview_body(state: &AppState, viewer: &Viewer) -> Result<String, Problem> {
    let mut body = String::new();
    if viewer.operator() {
        let beats = state.jobs.heartbeats().await?;
        body.push_str(&workers_table(&beats));
    }
    let backlog = state.jobs.backlog().await?;
    body.push_str("<h2>Backlog</h2><table><tr><th>tenant</th><th>priority</th><th>tasks waiting or running</th></tr>");
    let mut rows = 0;
    for ((tenant, priority), n) in &backlog.waiting {
        if viewer.may_read(tenant) {
            let _ = write!(body, "<tr><td>{}</td><td>{}</td><td>{n}</td></tr>", esc(tenant), priority.as_str());
            rows += 1;
        }
    }
    if rows == 0 {
        body.push_str("<tr><td colspan=\"3\" class=\"muted\">nothing waiting</td></tr>");
    }
    body.push_str("</table><h2>Latest jobs</h2>");
    body.push_str(&jobs_table(&latest_jobs(state, viewer, 10).await?));
    Ok(body)
}

/// Each worker with its devices, and its GPUs' NVML readings (or why there are none).
fn workers_table(beats: &[Heartbeat]) -> String {
    let mut out = String::from(
        "<h2>Workers</h2><table><tr><th>worker</th><th>host</th><th>state</th><th>device</th><th>memory free / total (MiB)</th>\
         <th>running / slots</th><th>warm models</th><th>GPU readings</th></tr>",
    );
    if beats.is_empty() {
        out.push_str("<tr><td colspan=\"8\" class=\"muted\">no live worker</td></tr>");
    }
    for b in beats {
        let gpus = if b.gpus.is_empty() {
            format!(
                "<span class=\"muted\">no NVML: {}</span>",
                esc(b.telemetry_absent.as_deref().unwrap_or("none reported"))
            )
        } else {
            b.gpus
                .iter()
                .map(|g| {
                    let opt =
                        |v: Option<u32>, unit: &str| v.map(|v| format!("{v}{unit}")).unwrap_or_else(|| "–".into());
                    format!(
                        "GPU {} {}: {} util, {} / {} MiB, {}, {}{}",
                        g.index,
                        esc(&g.name),
                        opt(g.gpu_util_pct, "%"),
                        g.memory_used_mib,
                        g.memory_total_mib,
                        opt(g.temperature_c, " °C"),
                        g.power_w.map(|p| format!("{p:.0} W")).unwrap_or_else(|| "–".into()),
                        if g.throttle_reasons.is_empty() {
                            String::new()
                        } else {
                            format!(", throttled: {}", esc(&g.throttle_reasons.join(" ")))
                        }
                    )
                })
                .collect::<Vec<_>>()
                .join("<br>")
        };
        for d in &b.devices {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} / {}</td><td>{} / {}</td><td>{}</td><td>{gpus}</td></tr>",
                esc(&b.id),
                esc(&b.host),
                esc(&b.state),
                esc(&d.spec),
                d.memory_free_mib,
                d.memory_total_mib,
                d.running,
                d.slots,
                esc(&d.warm_models.join(", ")),
            );
        }
    }
    out.push_str("</table>");
    out
}

/// The newest jobs the viewer may read, newest first.
async fn latest_jobs(state: &AppState, viewer: &Viewer, limit: usize) -> Result<Vec<JobView>, Problem> {
    let mut out = Vec::new();
    for tenant in viewer.tenants(state).await? {
        for id in state.jobs.list(&tenant, limit).await? {
            if let Some(job) = view(state, &tenant, &id).await? {
                out.push(job);
            }
        }
    }
    out.sort_by_key(|j| std::cmp::Reverse(j.accepted_at_ms));
    out.truncate(limit);
    Ok(out)
}

fn jobs_table(jobs: &[JobView]) -> String {
    let mut out = String::from(
        "<table><tr><th>job</th><th>tenant</th><th>kind</th><th>priority</th><th>state</th><th>progress</th>\
         <th>items ok</th><th>items failed</th><th>model</th></tr>",
    );
    if jobs.is_empty() {
        out.push_str("<tr><td colspan=\"9\" class=\"muted\">no jobs</td></tr>");
    }
    for j in jobs {
        let p = &j.progress;
        let _ = write!(
            out,
            "<tr><td><a href=\"/ui/jobs/{t}/{i}\">{i}</a></td><td>{t}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td><progress value=\"{}\" max=\"{}\"></progress> {} / {} tasks</td><td>{}</td><td{}>{}</td><td>{}</td></tr>",
            esc(&j.kind),
            esc(&j.priority),
            esc(&j.state),
            p.tasks_done,
            p.tasks_total.max(1),
            p.tasks_done,
            p.tasks_total,
            p.items_succeeded,
            if p.items_failed > 0 { " class=\"bad\"" } else { "" },
            p.items_failed,
            esc(&j.model),
            t = esc(&j.tenant),
            i = esc(&j.id),
        );
    }
    out.push_str("</table>");
    out
}

async fn jobs(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let viewer = match viewer(&state, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    match latest_jobs(&state, &viewer, JOBS_SHOWN).await {
        Ok(list) => page("Jobs", Some(&viewer), true, &jobs_table(&list)).into_response(),
        Err(p) => p.into_response(),
    }
}

/// One job: its counts, its failures with their reasons, a contact sheet of its results.
async fn job(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((tenant, id)): Path<(String, String)>,
) -> Response {
    let viewer = match viewer(&state, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let not_found = || page("No such job", Some(&viewer), false, "<p>No such job.</p>");
    // Another tenant's job looks exactly like none.
    let Some(tenant) = TenantId::new(&tenant).ok().filter(|t| viewer.may_read(t.as_str())) else {
        return (StatusCode::NOT_FOUND, not_found()).into_response();
    };
    match job_body(&state, &tenant, &id).await {
        Ok(Some((job, body))) => {
            let running =
                !matches!(job.state.as_str(), "succeeded" | "succeeded_with_item_errors" | "failed" | "cancelled");
            page(&format!("Job {id}"), Some(&viewer), running, &body).into_response()
        }
        Ok(None) => (StatusCode::NOT_FOUND, not_found()).into_response(),
        Err(p) => p.into_response(),
    }
}

async fn job_body(state: &AppState, tenant: &TenantId, id: &str) -> Result<Option<(JobView, String)>, Problem> {
    let Some(job) = view(state, tenant, id).await? else { return Ok(None) };
    let mut body = jobs_table(std::slice::from_ref(&job));
    if let Some(reason) = &job.reason {
        let _ = write!(body, "<p class=\"bad\">Failed: {}</p>", esc(reason));
    }
    let failures = state.jobs.failures(tenant, id, 0, 200).await?;
    let _ = write!(body, "<h2>Failed items ({})</h2>", job.progress.items_failed);
    if failures.is_empty() {
        body.push_str("<p class=\"muted\">none</p>");
    } else {
        body.push_str("<table><tr><th>input</th><th>code</th><th>reason</th></tr>");
        for f in &failures {
            let _ =
                write!(body, "<tr><td>{}</td><td>{}</td><td>{}</td></tr>", esc(&f.key), esc(&f.code), esc(&f.reason));
        }
        body.push_str("</table>");
    }
    body.push_str("<h2>Contact sheet</h2>");
    body.push_str(&contact_sheet(state, tenant, id).await?);
    Ok(Some((job, body)))
}

/// The job's result images (`<item>/result.<ext>`, and generated variants), each from a
/// presigned URL, captioned with its input's folder.
async fn contact_sheet(state: &AppState, tenant: &TenantId, id: &str) -> Result<String, Problem> {
    let prefix = results_prefix(tenant, id);
    let mut images = Vec::new();
    let mut token = None;
    loop {
        let page = state.s3.list_page(&prefix, token, 1000).await?;
        for key in page.keys {
            let name = key.strip_prefix(&prefix).unwrap_or(&key).to_string();
            let file = name.rsplit('/').next().unwrap_or_default();
            if file.starts_with("result.") && [".png", ".jpg", ".jpeg", ".webp"].iter().any(|e| file.ends_with(e)) {
                images.push((key, name));
            }
        }
        token = page.next;
        if token.is_none() || images.len() >= SHEET {
            break;
        }
    }
    if images.is_empty() {
        return Ok("<p class=\"muted\">no results yet</p>".into());
    }
    let mut out = String::from("<div class=\"sheet\">");
    for (key, name) in images.iter().take(SHEET) {
        let url = state.s3.presign_get(key, state.settings.url_ttl).await?;
        let caption = name.rsplit_once('/').map(|(item, _)| item).unwrap_or(name);
        let _ = write!(
            out,
            "<figure><img src=\"{}\" alt=\"{c}\" loading=\"lazy\"><figcaption title=\"{c}\">{c}</figcaption></figure>",
            esc(&url),
            c = esc(caption)
        );
    }
    out.push_str("</div>");
    if images.len() > SHEET {
        let _ = write!(out, "<p class=\"muted\">the first {SHEET} results</p>");
    }
    Ok(out)
}

/// Fine-tunes: step, phase, loss, learning rate while training; the loss and learning-rate
/// curves the run registered beside its model once trained.
async fn fine_tunes(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let viewer = match viewer(&state, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    match fine_tunes_body(&state, &viewer).await {
        Ok(body) => page("Fine-tunes", Some(&viewer), true, &body).into_response(),
        Err(p) => p.into_response(),
    }
}

async fn fine_tunes_body(state: &AppState, viewer: &Viewer) -> Result<String, Problem> {
    let mut tunes = Vec::new();
    for tenant in viewer.tenants(state).await? {
        for id in state.jobs.list(&tenant, JOBS_SHOWN * 10).await? {
            if let Some(job) = view(state, &tenant, &id).await?.filter(|j| j.kind == "fine_tune") {
                tunes.push((tenant.clone(), job));
            }
        }
    }
    if tunes.is_empty() {
        return Ok("<p class=\"muted\">no fine-tunes</p>".into());
    }
    let mut body = String::new();
    for (tenant, job) in tunes.iter().take(JOBS_SHOWN) {
        let spec = &job.request["spec"];
        let output = match (spec["output"]["name"].as_str(), spec["output"]["version"].as_str()) {
            (Some(n), Some(v)) => Some(format!("{n}@{v}")),
            _ => None,
        };
        let _ = write!(
            body,
            "<section class=\"fine-tune\"><h2><a href=\"/ui/jobs/{t}/{i}\">{i}</a></h2><table>\
             <tr><th>state</th><td>{}</td></tr><tr><th>base model</th><td>{}</td></tr><tr><th>registers</th><td>{}</td></tr>",
            esc(&job.state),
            esc(spec["base_model"].as_str().unwrap_or("–")),
            esc(output.as_deref().unwrap_or("–")),
            t = esc(tenant.as_str()),
            i = esc(&job.id),
        );
        if let Some(t) = &job.training {
            let figure = |k: &str| t[k].as_f64().map(|v| format!("{v:.4}")).unwrap_or_else(|| "–".into());
            let last = t["steps"].as_array().and_then(|s| s.last()).cloned().unwrap_or_default();
            let _ = write!(
                body,
                "<tr><th>step</th><td>{} / {} (phase {})</td></tr><tr><th>loss</th><td>{}</td></tr>\
                 <tr><th>learning rate</th><td>{}</td></tr><tr><th>steps/s</th><td>{}</td></tr><tr><th>time left (s)</th><td>{}</td></tr>",
                t["step"],
                t["total_steps"],
                t["phase"],
                last["loss"].as_f64().map(|v| format!("{v:.4}")).unwrap_or_else(|| "–".into()),
                last["lr"].as_f64().map(|v| format!("{v:.2e}")).unwrap_or_else(|| "–".into()),
                figure("steps_per_s"),
                figure("eta_s"),
            );
        }
        body.push_str("</table>");
        if let Some(model) = output.as_deref().and_then(|m| m.parse::<fleet_protocol::manifest::ModelRef>().ok()) {
            let key = format!("{}loss-curve.png", Scope::Tenant(tenant.clone()).prefix(&model));
            if state.s3.exists(&key).await? {
                let url = state.s3.presign_get(&key, state.settings.url_ttl).await?;
                let _ = write!(
                    body,
                    "<figure><img class=\"curve\" src=\"{}\" alt=\"loss and learning rate per step\">\
                     <figcaption>loss (top) and learning rate (bottom) per step</figcaption></figure>",
                    esc(&url)
                );
            } else {
                body.push_str("<p class=\"muted\">the curves appear once the model is registered</p>");
            }
        }
        body.push_str("</section>");
    }
    Ok(body)
}

/// Models with where they come from: a fine-tune's parent, data and steps; a shared model's
/// package and licence.
async fn models(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let viewer = match viewer(&state, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    // An operator reads the shared models through no tenant's eyes: list them as the first
    // tenant's view shows them, less that tenant's own.
    let tenant = match viewer.tenant() {
        Some(t) => Some(t),
        None => state.jobs.tenants().await.ok().and_then(|t| t.into_iter().next()),
    };
    let Some(tenant) = tenant else {
        return page("Models", Some(&viewer), false, "<p class=\"muted\">no tenant has submitted yet</p>")
            .into_response();
    };
    let listed = match list_models(&state.s3, &tenant).await {
        Ok(listed) => listed,
        Err(e) => return Problem::unavailable(e.to_string(), 2).into_response(),
    };
    let mut body = String::from(
        "<table><tr><th>model</th><th>scope</th><th>task</th><th>input</th><th>parameters</th><th>lineage</th></tr>",
    );
    for (scope, m) in listed {
        let own = matches!(scope, Scope::Tenant(_));
        if own && viewer.operator() {
            continue;
        }
        let lineage = match &m.source {
            Some(s) => format!("weights from {}@{} ({})", esc(&s.package), esc(&s.version), esc(&s.licence)),
            None if m.training.is_null() => "<span class=\"muted\">made by the fleet</span>".into(),
            None => {
                let t = &m.training;
                let text = |v: &serde_json::Value| match v {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => "–".into(),
                    other => other.to_string(),
                };
                format!(
                    "fine-tuned from {} on {}, {} steps",
                    esc(&text(&t["parent"])),
                    esc(&text(&t["data"]["key"])),
                    esc(&text(&t["steps"]))
                )
            }
        };
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}x{}</td><td>{}</td><td>{lineage}</td></tr>",
            esc(&m.model_ref().to_string()),
            if own { "own" } else { "shared" },
            esc(&serde_json::to_value(m.task).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()),
            m.input.width,
            m.input.height,
            m.parameters,
        );
    }
    body.push_str("</table>");
    page("Models", Some(&viewer), false, &body).into_response()
}

#[cfg(test)]
mod tests {
    use super::esc;

    #[test]
    fn text_from_records_cannot_become_markup() {
        assert_eq!(
            esc("<img src=x onerror=\"a('b')\"> & co"),
            "&lt;img src=x onerror=&quot;a(&#39;b&#39;)&quot;&gt; &amp; co"
        );
    }
}
