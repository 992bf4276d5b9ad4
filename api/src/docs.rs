//! The `/docs` page: every operation of the OpenAPI document with its parameters, request and
//! answers, and the problem codes, rendered on the server (no script or outside asset).

use std::fmt::Write;

use utoipa::openapi::path::Operation;
use utoipa::openapi::OpenApi;

/// Problem codes and what they mean, anchored as `#problem-<code>`.
const PROBLEMS: [(&str, &str); 13] = [
    ("over_quota", "Over one of the tenant's quotas (429); Retry-After says when a retry may pass."),
    ("unknown_model", "The job names a model the registry does not hold (422)."),
    ("conflict", "A fine-tune's output model is already registered: pick a new version (422)."),
    ("malformed", "The body or a parameter is not what the endpoint takes (400)."),
    ("invalid", "A job or request broke a rule; the detail names it (422)."),
    ("forbidden", "A key outside the tenant's space (403)."),
    ("too_large", "Over a size limit (413)."),
    ("unauthorized", "No token, or an unknown or revoked one (401)."),
    ("not_found", "No such thing for this token: another tenant's job looks the same (404)."),
    ("operator_only", "An operator's endpoint called with a tenant's token (403)."),
    ("tenant_only", "A tenant's endpoint called with an operator's token (403)."),
    ("unavailable", "Redis, the broker or the object store is out of reach; retry after Retry-After (503)."),
    ("internal", "Something failed that a retry will not fix (500)."),
];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn operation(out: &mut String, method: &str, path: &str, op: &Operation) {
    let summary = op.summary.clone().or_else(|| op.description.clone()).unwrap_or_default();
    let _ = write!(out, "<section><h3><code>{method} {}</code></h3>", escape(path));
    let _ = write!(out, "<p>{}</p>", escape(op.description.as_deref().unwrap_or(&summary)));
    if let Some(params) = &op.parameters {
        out.push_str("<ul>");
        for p in params {
            let _ = write!(
                out,
                "<li><code>{}</code> ({}): {}</li>",
                escape(&p.name),
                serde_json::to_value(&p.parameter_in)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                escape(p.description.as_deref().unwrap_or(""))
            );
        }
        out.push_str("</ul>");
    }
    out.push_str("<table><tr><th>status</th><th>meaning</th></tr>");
    for (status, response) in &op.responses.responses {
        let text = match response {
            utoipa::openapi::RefOr::T(r) => r.description.clone(),
            utoipa::openapi::RefOr::Ref(r) => r.ref_location.clone(),
        };
        let _ = write!(out, "<tr><td>{status}</td><td>{}</td></tr>", escape(&text));
    }
    out.push_str("</table></section>");
}

/// The page for `doc`.
pub fn page(doc: &OpenApi) -> String {
    let mut out = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>gpu-fleet API</title><style>\
         body{font-family:sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}\
         code{background:#f3f3f3;padding:0 .2rem}table{border-collapse:collapse}\
         td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:left}</style></head><body>",
    );
    let _ = write!(
        out,
        "<h1>{}</h1><p>{}</p>",
        escape(&doc.info.title),
        escape(doc.info.description.as_deref().unwrap_or(""))
    );
    out.push_str(
        "<p>Send the token as <code>Authorization: Bearer fleet_&lt;id&gt;_&lt;secret&gt;</code>. \
         The machine-readable document is <a href=\"/openapi.json\">/openapi.json</a>.</p><h2>Operations</h2>",
    );
    for (path, item) in &doc.paths.paths {
        let methods = [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PUT", &item.put),
            ("DELETE", &item.delete),
            ("PATCH", &item.patch),
        ];
        for (method, op) in methods {
            if let Some(op) = op {
                operation(&mut out, method, path, op);
            }
        }
    }
    out.push_str(
        "<h2>Problems</h2><p>Errors are <code>application/problem+json</code> with a stable <code>code</code>:</p><dl>",
    );
    for (code, meaning) in PROBLEMS {
        let _ = write!(out, "<dt id=\"problem-{code}\"><code>{code}</code></dt><dd>{meaning}</dd>");
    }
    out.push_str("</dl></body></html>");
    out
}
