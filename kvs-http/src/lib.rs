//! `kvs_http`: a REST gateway and a live web page in front of a kvs server.
//!
//! The gateway is an ordinary [`kvs_client::BytesClient`] of the region,
//! behind an [`axum`] application. Keys and values are bytes: JSON carries
//! them as strings when they are UTF-8 and as base64 otherwise, and `/raw`
//! reads and writes a value's bytes as they are.
//!
//! * [`store`]: the connection, and reconnection when the server restarts;
//! * [`json`]: bytes in JSON (text, or base64 with a `_base64` field);
//! * [`api`]: the JSON and raw endpoints and the error mapping;
//! * [`openapi`]: the OpenAPI document (served at `/openapi.json`, with
//!   Swagger UI at `/docs`);
//! * [`operations`]: expiry and counters (`/ttl`, `/expire`, `/persist`,
//!   `/incr`); [`batches`]: `/mget`, `/mset`, `/mdel`;
//! * [`events`]: the thread that turns one subscription into the `/events`
//!   server-sent-events streams;
//! * [`history`]: the last ten minutes of requests per second and memory,
//!   sampled each second (`/stats`, the page's charts);
//! * [`auth`]: the optional bearer token;
//! * [`app`]: the routes, the request-body limits that follow the store's,
//!   and the page (`/`, plain HTML, CSS and a small script embedded in the
//!   binary);
//! * [`serve`]: the accept loop, with a connection limit and timeouts for
//!   request heads, idle keep-alive connections and request bodies;
//! * [`gateway`]: all of it as one value: bind, then serve until told to
//!   stop (the `kvs_http` binary is a command line over it, in `kvs-cli`).
//!
//! ```no_run
//! use kvs_http::api::AppState;
//! use kvs_http::events::Pump;
//! use kvs_http::store::Connector;
//! use std::sync::Arc;
//!
//! # async fn demo() -> std::io::Result<()> {
//! let connector = Arc::new(Connector::new("kvs"));
//! let (events, _) = tokio::sync::broadcast::channel(1024);
//! let pump = Pump::spawn(Arc::clone(&connector), events.clone());
//! let history = Arc::new(kvs_http::history::History::new());
//! tokio::spawn(kvs_http::history::sample(Arc::clone(&connector), Arc::clone(&history)));
//! let state = AppState { connector, events, pump: pump.state(), history };
//! let app = kvs_http::app::router(state, None, Some(8000)); // loopback only, port 8000
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! axum::serve(listener, app).await
//! # }
//! ```

#![warn(missing_docs)]

pub mod api;
pub mod app;
pub mod auth;
pub mod batches;
pub mod events;
pub mod gateway;
pub mod history;
pub mod json;
pub mod openapi;
pub mod operations;
pub mod serve;
pub mod store;
