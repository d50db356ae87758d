//! The one integration-test binary: full servers on 127.0.0.1 port 0 with
//! temporary data directories, driven by real HTTP clients (and the real
//! binary as a child process where a process boundary matters).

mod common;

mod access_matrix;
mod acks;
mod apikeys;
mod auth;
mod cli;
mod cluster;
mod cluster_ingest;
mod crash_loop;
mod dashboard;
mod demo;
mod deploy;
mod devices;
mod events;
mod export;
mod fanout;
mod frames;
mod graph;
mod history;
mod ingest;
mod ingest_compliance;
mod lineproto;
mod lorawan;
pub mod ml;
mod mqtt;
mod opcua;
mod openapi;
mod ops;
mod postgres;
pub mod process;
mod quotas;
mod roles;
mod routes;
mod rules;
mod rules_graph;
mod rules_replay;
mod security;
mod sparkplug;
mod store_health;
