//! The OpenAPI document of the gateway (served at `/openapi.json`, with
//! Swagger UI at `/docs`): every call of [`crate::api`],
//! [`crate::operations`] and [`crate::batches`], with every answer it
//! gives.

use crate::{api, batches, history, operations};
use utoipa::openapi::security::SecurityRequirement;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::OpenApi;

/// Adds the optional bearer-token scheme (`kvs_http --token`).
#[derive(Debug)]
struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        // Either no token (a gateway started without --token) or the bearer.
        openapi.security = Some(vec![
            SecurityRequirement::default(),
            SecurityRequirement::new("bearer", Vec::<String>::new()),
        ]);
    }
}

/// Adds the answers any call can get from the gateway itself, before its
/// handler runs: 401 (the token), 405 (a method the path does not serve)
/// and 421 (the Host check of a loopback gateway without a token).
#[derive(Debug)]
struct GatewayAnswers;

impl utoipa::Modify for GatewayAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let answer = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        let answers = [
            ("401", "The gateway runs with --token and the request lacks `Authorization: Bearer TOKEN`, or has another token"),
            ("405", "A method this path does not serve (each path's methods are those documented)"),
            ("421", "A gateway on loopback without --token answers only requests whose Host is a loopback name (localhost, 127.0.0.1, [::1]), against DNS rebinding"),
        ];
        for item in openapi.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                for (code, description) in answers {
                    op.responses
                        .responses
                        .entry(code.to_string())
                        .or_insert_with(|| answer(description).into());
                }
            }
        }
    }
}

/// The OpenAPI document of the gateway.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "kvs_http",
        description = "REST gateway of a kvs store. Keys (1 byte up to the server's --max-key-size) and values (up to its --max-value-size) are bytes: in JSON, bytes that are UTF-8 travel as a string in `key`/`value`, others as standard padded base64 in `key_base64`/`value_base64` (exactly one of each pair); /raw reads and writes a value's bytes as application/octet-stream. Every error answers {\"error\": \"...\"}. When the gateway runs with --token, every request needs `Authorization: Bearer TOKEN`."
    ),
    paths(
        api::get_key,
        api::get_key_query,
        api::set_key,
        api::post_key,
        api::del_key,
        api::del_key_query,
        api::raw_get,
        api::raw_get_query,
        api::raw_put,
        api::raw_put_query,
        api::status,
        api::events,
        operations::ttl_key,
        operations::ttl_query,
        operations::expire,
        operations::persist,
        operations::incr,
        api::stats,
        batches::mget,
        batches::mset,
        batches::mdel
    ),
    components(schemas(
        api::KeyValue,
        api::SetBody,
        api::SetAnswer,
        operations::KeyRequest,
        operations::ExpireBody,
        operations::IncrBody,
        operations::TtlBody,
        operations::CounterBody,
        history::StatsBody,
        history::Sample,
        batches::KeysBody,
        batches::MsetBody,
        batches::MgetAnswer,
        batches::MsetAnswer,
        batches::MdelAnswer,
        api::KeyBody,
        api::RawSetBody,
        api::EntryBody,
        api::LimitsBody,
        api::StatusBody,
        api::ErrorBody
    )),
    modifiers(&BearerToken, &GatewayAnswers),
    tags(
        (name = "store", description = "The key-value store, in JSON"),
        (name = "expiry and counters", description = "TTLs and atomic counters"),
        (name = "batches", description = "Many keys in one call"),
        (name = "raw", description = "Values as bytes (application/octet-stream)")
    )
)]
pub struct ApiDoc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_lists_every_answer_of_every_call() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let codes = |path: &str, method: &str| -> Vec<String> {
            let all = doc["paths"][path][method]["responses"]
                .as_object()
                .unwrap_or_else(|| panic!("{method} {path} missing"));
            // The gateway's own answers, on every call.
            for code in ["401", "405", "421"] {
                assert!(all.contains_key(code), "{method} {path} lacks {code}");
            }
            let mut c: Vec<String> = all
                .keys()
                .filter(|c| !["401", "405", "421"].contains(&c.as_str()))
                .cloned()
                .collect();
            c.sort();
            c
        };
        let key_calls = ["200", "400", "404", "413", "502", "503"];
        for (path, method) in [
            ("/get/{key}", "get"),
            ("/get", "get"),
            ("/raw/{key}", "get"),
            ("/raw", "get"),
            ("/ttl/{key}", "get"),
            ("/ttl", "get"),
            ("/expire", "post"),
            ("/persist", "post"),
        ] {
            assert_eq!(codes(path, method), key_calls, "{method} {path}");
        }
        let cas_deletes = ["200", "400", "404", "412", "413", "502", "503"];
        for (path, method) in [("/del/{key}", "delete"), ("/del", "delete")] {
            assert_eq!(codes(path, method), cas_deletes, "{method} {path}");
        }
        let writes = ["200", "400", "413", "502", "503", "507"];
        for (path, method) in [("/raw/{key}", "put"), ("/raw", "put"), ("/mset", "post")] {
            assert_eq!(codes(path, method), writes, "{method} {path}");
        }
        assert_eq!(
            codes("/set", "post"),
            ["200", "400", "412", "413", "502", "503", "507"]
        );
        assert_eq!(
            codes("/incr", "post"),
            ["200", "400", "413", "422", "502", "503", "507"]
        );
        for path in ["/mget", "/mdel"] {
            assert_eq!(codes(path, "post"), ["200", "400", "413", "502", "503"]);
        }
        assert_eq!(codes("/stats", "get"), ["200", "400"]);
        assert_eq!(
            codes("/post", "post"),
            ["201", "400", "409", "413", "502", "503", "507"]
        );
        assert_eq!(codes("/status", "get"), ["200", "400", "502", "503"]);
        assert_eq!(codes("/events", "get"), ["200"]);
        // Every call of the document is one the gateway serves, and the
        // raw answers say what they are.
        let calls: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|p| p.as_object().unwrap().len())
            .sum();
        assert_eq!(calls, 21);
        let raw = &doc["paths"]["/raw/{key}"]["get"]["responses"]["200"];
        assert!(
            raw["content"]["application/octet-stream"].is_object(),
            "{raw}"
        );
        assert!(raw["headers"]["X-Kvs-Version"].is_object(), "{raw}");
        assert!(raw["headers"]["X-Kvs-Modified-Ms"].is_object(), "{raw}");
        assert_eq!(
            raw["content"]["application/octet-stream"]["schema"]["format"],
            "binary"
        );
        let put = &doc["paths"]["/raw/{key}"]["put"]["requestBody"]["content"];
        assert_eq!(
            put["application/octet-stream"]["schema"]["format"], "binary",
            "{put}"
        );
        let kv = &doc["components"]["schemas"]["KeyValue"]["properties"];
        for field in ["key", "key_base64", "value", "value_base64"] {
            assert!(kv[field].is_object(), "KeyValue lacks {field}");
        }
    }
}
