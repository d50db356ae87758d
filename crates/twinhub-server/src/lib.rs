//! twinhub-server: everything of twinhub that does I/O.
//!
//! Layering (data flows one way): `ingest` decodes and authenticates, then
//! hands typed batches to the `pipeline` (validate → twin → store); `store`
//! owns all persistence; `api` serves HTTP on top of the registries and the
//! store; `server` wires it together and owns the listeners. Lower modules
//! never call upward: `store` knows nothing of HTTP, `pipeline` nothing of
//! protocols.

pub mod api;
pub mod audit;
pub mod auth;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod connectors;
pub mod events;
pub mod forwarded;
pub mod ingest;
pub mod keyfile;
pub mod metrics;
pub mod ml;
pub mod mqtt;
pub mod ontologies;
pub mod pipeline;
pub mod ports;
pub mod quotas;
pub mod registry;
pub mod roles;
pub mod routes;
pub mod rules;
pub mod secrets;
pub mod server;
pub mod store;
pub mod tls;
pub mod twins;
pub mod web;
