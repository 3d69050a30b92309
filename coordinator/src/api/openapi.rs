//! `GET /v1/openapi.json`: the OpenAPI 3.1 document of every route.
//!
//! Each handler carries its own `#[utoipa::path]` (method, path, body,
//! success responses). Who may call a route is not written again here: the
//! route table's [`Access`] decides each operation's security, and every
//! operation gets the one error shape as its `default` response. A test
//! checks that the document's operations are exactly the route table's.

use std::sync::{Arc, OnceLock};

use axum::Json;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{ContentBuilder, OpenApi as Document, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

use super::auth::Anonymous;
use super::{routes, Access};

/// `POST /v1/jobs`' answer.
#[derive(ToSchema)]
#[allow(dead_code)] // only its schema is used
pub struct Submitted {
    /// The job's id.
    id: String,
    /// How many tasks it was split into.
    tasks: u64,
}

/// `GET /v1/jobs`' answer.
#[derive(ToSchema)]
#[allow(dead_code)] // only its schema is used
pub struct JobList {
    /// The newest first.
    jobs: Vec<crate::store::JobStatus>,
}

/// `GET /v1/modules`' answer.
#[derive(ToSchema)]
#[allow(dead_code)] // only its schema is used
pub struct ModuleList {
    /// Oldest first.
    modules: Vec<crate::store::ModuleRecord>,
}

/// Every error: `{"error":{"code":..,"message":..}}`, 4xx for the caller's
/// fault, 5xx for the coordinator's.
#[derive(ToSchema)]
#[allow(dead_code)] // only its schema is used
pub struct ErrorBody {
    /// What went wrong.
    error: ErrorDetail,
    /// The job's state, when a result was asked for too early.
    state: Option<crate::store::JobState>,
}

/// The inside of [`ErrorBody`].
#[derive(ToSchema)]
#[allow(dead_code)] // only its schema is used
pub struct ErrorDetail {
    /// Stable and machine-readable: `not_found`, `invalid_job`, ...
    code: String,
    /// For a person: what went wrong and what to do.
    message: String,
}

/// The document: every handler's path, the shared schemas, and what
/// [`FromRouteTable`] adds.
#[derive(OpenApi)]
#[openapi(
    info(title = "Musketeer coordinator", description = "Jobs, WebAssembly modules, agents, tokens and releases of a Musketeer cluster."),
    paths(
        super::dashboard::page,
        super::dashboard::script,
        super::dashboard::style,
        super::dashboard::login,
        super::dashboard::logout,
        super::dashboard::snapshot,
        super::dashboard::events,
        super::metrics::healthz,
        super::metrics::metrics,
        document,
        super::jobs::submit,
        super::jobs::list,
        super::jobs::submit_wordcount_stream,
        super::jobs::status,
        super::jobs::cancel,
        super::jobs::retry,
        super::jobs::result,
        super::jobs::why,
        super::schedules::create,
        super::schedules::list,
        super::schedules::pause,
        super::schedules::resume,
        super::schedules::delete,
        super::workflows::submit,
        super::workflows::status,
        super::workflows::cancel,
        super::admin::create_token,
        super::admin::list_tokens,
        super::admin::revoke_token,
        super::admin::list_agents,
        super::admin::remove_agent,
        super::admin::drain_agent,
        super::agent::enrol,
        super::agent::lease,
        super::agent::results,
        super::agent::heartbeat,
        super::agent::release,
        super::agent::whoami,
        super::releases::list,
        super::releases::publish,
        super::releases::latest,
        super::releases::download,
        super::modules::upload,
        super::modules::list,
        super::modules::delete,
        super::modules::fetch,
    ),
    components(schemas(ErrorBody, ErrorDetail, Submitted, JobList, ModuleList, super::modules::Uploaded)),
    tags((name = "dashboard", description = "The web dashboard: login, the page, its live data")),
    modifiers(&FromRouteTable)
)]
struct ApiDoc;

/// Security and errors from the route table: a bearer token on routes for
/// the admin and for agents, and the error shape as every operation's
/// `default` response.
struct FromRouteTable;

/// The name of the bearer scheme in the document.
const BEARER: &str = "bearer";
/// The name of the dashboard session's cookie scheme in the document.
const SESSION: &str = "session";

/// Whether a route of `access` needs a credential.
fn secured(access: Access) -> bool {
    matches!(
        access,
        Access::Admin | Access::Agent | Access::Read | Access::Dashboard
    )
}

impl Modify for FromRouteTable {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The admin token (data directory's admin.token); a viewer token (`token create --viewer`) on the routes that only read; an agent's credential on /v1/agent/*",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            SESSION,
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                super::session::COOKIE,
                "A dashboard session from POST /login; a request that changes state must also send its CSRF token in X-CSRF-Token",
            ))),
        );
        let error = ResponseBuilder::new()
            .description("An error: 4xx for the caller's fault, 5xx for the coordinator's")
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build();
        for route in routes() {
            let Some(op) = doc
                .paths
                .paths
                .get_mut(route.path)
                .and_then(|item| operation(item, route.method))
            else {
                continue; // the test below names what is missing
            };
            op.responses
                .responses
                .insert("default".into(), error.clone().into());
            op.security = secured(route.access).then(|| {
                let mut ways = vec![SecurityRequirement::new(BEARER, Vec::<String>::new())];
                if route.access != Access::Agent {
                    ways.push(SecurityRequirement::new(SESSION, Vec::<String>::new()));
                }
                ways
            });
        }
    }
}

/// The operation of `item` for an HTTP method as the route table spells it.
fn operation<'a>(item: &'a mut PathItem, method: &str) -> Option<&'a mut Operation> {
    match method {
        "GET" => item.get.as_mut(),
        "POST" => item.post.as_mut(),
        "DELETE" => item.delete.as_mut(),
        "PUT" => item.put.as_mut(),
        "PATCH" => item.patch.as_mut(),
        _ => None,
    }
}

/// The document, built once.
fn built() -> Arc<Document> {
    static DOC: OnceLock<Arc<Document>> = OnceLock::new();
    DOC.get_or_init(|| Arc::new(ApiDoc::openapi())).clone()
}

/// `GET /v1/openapi.json`.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "people", responses((status = 200, description = "This document", body = serde_json::Value)))]
pub async fn document(_: Anonymous) -> Json<Document> {
    Json(Document::clone(&built()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// (method, path) of every operation in the document.
    fn documented() -> BTreeSet<(String, String)> {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let mut ops = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                    ops.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        ops
    }

    #[test]
    fn the_document_has_exactly_the_route_tables_operations() {
        let table: BTreeSet<(String, String)> = routes()
            .into_iter()
            .map(|r| (r.method.to_string(), r.path.to_string()))
            .collect();
        assert_eq!(documented(), table);
    }

    #[test]
    fn operation_ids_are_unique() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let mut seen = BTreeSet::new();
        for item in doc["paths"].as_object().unwrap().values() {
            for op in item.as_object().unwrap().values() {
                if let Some(id) = op["operationId"].as_str() {
                    assert!(seen.insert(id.to_string()), "operationId {id} twice");
                }
            }
        }
    }

    #[test]
    fn security_and_errors_follow_the_route_table() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        for route in routes() {
            let op = &doc["paths"][route.path][route.method.to_lowercase()];
            let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
            assert_eq!(
                secured,
                super::secured(route.access),
                "{} {}: {op}",
                route.method,
                route.path
            );
            assert_eq!(
                op["responses"]["default"]["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/ErrorBody",
                "{} {}",
                route.method,
                route.path
            );
        }
    }
}
