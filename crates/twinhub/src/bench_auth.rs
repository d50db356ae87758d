//! `twinhub bench auth`: what authentication costs. The per-request
//! overhead (bearer token → principal → permission check) for JWTs and
//! API keys, and the argon2id login time at the production default cost.

use std::time::Instant;
use twinhub_server::auth::Perm;
use twinhub_server::config::Config;
use twinhub_server::registry::Registry;
use twinhub_server::store::{DirLock, Store};

fn row(name: &str, value: String, target: &str) {
    println!("{name:<58} {value:>16}   {target}");
}

/// Mean µs per call of `f` over `n` calls.
fn per_call_us(n: usize, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_secs_f64() * 1e6 / n as f64
}

pub async fn run() -> anyhow::Result<()> {
    println!("\n== auth (production default argon2 cost)");
    let dir = tempfile::tempdir()?;
    let config = Config::default();
    let lock = DirLock::acquire(dir.path())?;
    let opts = config.store_options();
    let clock = twinhub_server::clock::system();
    let store = {
        let clock = clock.clone();
        tokio::task::spawn_blocking(move || Store::open(lock, opts, clock)).await??
    };
    let pw = "Bench-password-1";
    let (reg, _) = Registry::open(
        store.clone(),
        clock,
        config.auth_settings(),
        Some(pw.to_string()),
    )
    .await?;

    let mut times = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        reg.login("admin", pw)
            .await
            .map_err(|_| anyhow::anyhow!("login failed"))?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    row(
        &format!(
            "argon2id login (m={} KiB, t={}, p={}), median",
            config.auth.argon2_memory_kib, config.auth.argon2_iterations, config.auth.argon2_lanes
        ),
        format!("{:.1} ms", times[times.len() / 2]),
        "target 50–250 ms",
    );

    let user = reg.user("admin").expect("admin");
    let token = reg.issue_tokens(&user, None).await?.access_token;
    let n = 200_000;
    let us = per_call_us(n, || {
        let p = reg.principal_for_token(&token).expect("valid token");
        p.require(Perm::TwinsRead).expect("allowed");
    });
    row(
        "JWT (HS256) verify + principal + permission check",
        format!("{us:.2} µs"),
        "target ≤ 20 µs",
    );

    let (_, key) = reg
        .create_apikey(twinhub_server::store::registry::ApiKeyRow {
            id: String::new(),
            tenant: "default".into(),
            name: "bench".into(),
            key_hash: Vec::new(),
            roles: vec!["viewer".into()],
            permissions: None,
            created_by: "bench".into(),
            created_at: 0,
            expires_at: None,
            revoked_at: None,
            last_used: None,
        })
        .await?;
    let us = per_call_us(n, || {
        let p = reg.principal_for_token(&key).expect("valid key");
        p.require(Perm::TwinsRead).expect("allowed");
    });
    row(
        "API key (SHA-256) lookup + principal + permission check",
        format!("{us:.2} µs"),
        "target ≤ 20 µs",
    );
    let us = per_call_us(n, || {
        assert!(reg.principal_for_token("forged.token.value").is_none());
    });
    row("forged JWT refused", format!("{us:.2} µs"), "");
    drop(reg);
    tokio::task::spawn_blocking(move || store.close()).await?;
    Ok(())
}
