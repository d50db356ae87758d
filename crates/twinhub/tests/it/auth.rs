use crate::common::*;
use serde_json::json;

/// Every non-public route refuses a request without credentials with 401
/// and the contract's error shape.
#[tokio::test]
async fn every_private_route_needs_a_token() {
    let s = TestServer::start().await;
    let routes = [
        ("GET", "/api/v1/devices"),
        ("POST", "/api/v1/devices"),
        ("GET", "/api/v1/devices/x"),
        ("PATCH", "/api/v1/devices/x"),
        ("DELETE", "/api/v1/devices/x"),
        ("GET", "/api/v1/twins/x"),
        ("GET", "/api/v1/twins/x/telemetry"),
        ("GET", "/api/v1/twins/x/telemetry/t"),
        ("DELETE", "/api/v1/twins/x/telemetry/t"),
        ("POST", "/api/v1/history/query"),
        ("GET", "/api/v1/events"),
        ("POST", "/api/v1/auth/logout"),
        ("GET", "/api/v1/users"),
        ("POST", "/api/v1/users"),
        ("GET", "/api/v1/tenants"),
        ("POST", "/api/v1/tenants"),
    ];
    for (m, path) in routes {
        let r = s
            .http
            .request(m.parse().unwrap(), s.url(path))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        error_of(r, 401, "unauthorized").await;
        let r = s
            .http
            .request(m.parse().unwrap(), s.url(path))
            .bearer_auth("forged.token.value")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{m} {path} with a forged token");
    }
    for path in ["/health", "/ready", "/metrics", "/api/v1/openapi.json"] {
        assert_eq!(
            s.http.get(s.url(path)).send().await.unwrap().status(),
            200,
            "{path} is public"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn login_refresh_and_logout() {
    let s = TestServer::start().await;
    let r = s
        .http
        .post(s.url("/api/v1/auth/login"))
        .json(&json!({"username": "admin", "password": "wrong-password"}))
        .send()
        .await
        .unwrap();
    let wrong = error_of(r, 401, "unauthorized").await;
    let r = s
        .http
        .post(s.url("/api/v1/auth/login"))
        .json(&json!({"username": "nobody", "password": "wrong-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(r, 401, "unauthorized").await,
        wrong,
        "no user enumeration by message"
    );

    let (st, tokens) = s
        .json(
            s.http
                .post(s.url("/api/v1/auth/login"))
                .json(&json!({"username": "admin", "password": ADMIN_PASSWORD})),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 900);
    let access = tokens["access_token"].as_str().unwrap();
    let refresh = tokens["refresh_token"].as_str().unwrap();

    // Refresh rotates: the old refresh token is spent.
    let (st, fresh) = s
        .json(
            s.http
                .post(s.url("/api/v1/auth/refresh"))
                .json(&json!({"refresh_token": refresh})),
        )
        .await;
    assert_eq!(st, 200);
    let r = s
        .http
        .post(s.url("/api/v1/auth/refresh"))
        .json(&json!({"refresh_token": refresh}))
        .send()
        .await
        .unwrap();
    error_of(r, 401, "unauthorized").await;

    // Logout revokes the session: both its access tokens stop working.
    let new_access = fresh["access_token"].as_str().unwrap();
    assert_eq!(
        s.http
            .get(s.url("/api/v1/devices"))
            .bearer_auth(new_access)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        s.http
            .post(s.url("/api/v1/auth/logout"))
            .bearer_auth(new_access)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    for t in [access, new_access] {
        assert_eq!(
            s.http
                .get(s.url("/api/v1/devices"))
                .bearer_auth(t)
                .send()
                .await
                .unwrap()
                .status(),
            401
        );
    }
    let r = s
        .http
        .post(s.url("/api/v1/auth/refresh"))
        .json(&json!({"refresh_token": fresh["refresh_token"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    s.stop().await;
}

#[tokio::test]
async fn access_tokens_expire_with_the_clock() {
    let s = TestServer::start().await;
    assert_eq!(s.get("/api/v1/devices").send().await.unwrap().status(), 200);
    s.clock.advance_us(16 * 60 * 1_000_000);
    assert_eq!(s.get("/api/v1/devices").send().await.unwrap().status(), 401);
    s.stop().await;
}

#[tokio::test]
async fn roles_decide_and_refusals_name_the_permission() {
    let s = TestServer::start().await;
    let viewer = s.user("viewer1", &["viewer"]).await;
    let r = s
        .http
        .post(s.url("/api/v1/devices"))
        .bearer_auth(&viewer)
        .json(&json!({"id": "d1"}))
        .send()
        .await
        .unwrap();
    let msg = error_of(r, 403, "forbidden").await;
    assert!(msg.contains("devices:admin"), "{msg}");
    assert_eq!(
        s.http
            .get(s.url("/api/v1/devices"))
            .bearer_auth(&viewer)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Weak passwords and unknown roles are refused naming the field.
    let r = s
        .post(
            "/api/v1/users",
            json!({"username": "u2", "password": "short", "roles": ["viewer"]}),
        )
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 400, "bad_request")
        .await
        .starts_with("password:"));
    let r = s
        .post(
            "/api/v1/users",
            json!({"username": "u2", "password": "Long-enough-1", "roles": ["wizard"]}),
        )
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 400, "bad_request").await.contains("wizard"));
    s.stop().await;
}

/// A second tenant sees nothing of the first: foreign ids answer 404.
#[tokio::test]
async fn tenants_are_isolated() {
    let s = TestServer::start().await;
    let key = s.device("plant-a-dev").await;
    assert_eq!(
        s.send("plant-a-dev", &key, json!({"temperature": 1}))
            .await
            .status(),
        200
    );
    let (st, _) = s
        .json(s.post("/api/v1/tenants", json!({"id": "acme", "name": "ACME"})))
        .await;
    assert_eq!(st, 201);
    let r = s.post("/api/v1/users?tenant=acme", json!({"username": "acme-admin", "password": "Acme-admin-1", "tenant": "acme", "roles": ["tenant_admin"]})).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let acme = s.login("acme-admin", "Acme-admin-1").await;
    for path in [
        "/api/v1/devices/plant-a-dev",
        "/api/v1/twins/plant-a-dev",
        "/api/v1/twins/plant-a-dev/telemetry/temperature",
    ] {
        assert_eq!(
            s.http
                .get(s.url(path))
                .bearer_auth(&acme)
                .send()
                .await
                .unwrap()
                .status(),
            404,
            "{path}"
        );
    }
    // `?tenant=` is ignored for anyone but a system admin.
    let (_, list) = s
        .json(
            s.http
                .get(s.url("/api/v1/devices?tenant=default"))
                .bearer_auth(&acme),
        )
        .await;
    assert_eq!(list["value"].as_array().unwrap().len(), 0);
    let r = s
        .http
        .delete(s.url("/api/v1/devices/plant-a-dev"))
        .bearer_auth(&acme)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Device ids are global: the one thing another tenant can infer.
    let r = s
        .http
        .post(s.url("/api/v1/devices"))
        .bearer_auth(&acme)
        .json(&json!({"id": "plant-a-dev"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    // A tenant admin cannot create tenants.
    let r = s
        .http
        .post(s.url("/api/v1/tenants"))
        .bearer_auth(&acme)
        .json(&json!({"id": "x", "name": "x"}))
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 403, "forbidden")
        .await
        .contains("tenants:admin"));
    s.stop().await;
}

/// Users change their own password (proving the current one); admins
/// change passwords and roles; either ends the old sessions, and deleting
/// a user stops their tokens at once.
#[tokio::test]
async fn passwords_roles_and_deletion_take_effect_at_once() {
    let s = TestServer::start().await;
    let ann = s.user("ann", &["viewer"]).await;
    let as_ann = |m: &str, path: &str, body: serde_json::Value| {
        s.http
            .request(m.parse().unwrap(), s.url(path))
            .bearer_auth(&ann)
            .json(&body)
    };
    let r = as_ann(
        "PATCH",
        "/api/v1/users/ann",
        json!({"password": "Another-pass-1"}),
    )
    .send()
    .await
    .unwrap();
    assert!(error_of(r, 400, "bad_request")
        .await
        .contains("current_password"));
    let r = as_ann(
        "PATCH",
        "/api/v1/users/ann",
        json!({"roles": ["tenant_admin"]}),
    )
    .send()
    .await
    .unwrap();
    assert!(error_of(r, 403, "forbidden").await.contains("users:admin"));
    let r = as_ann(
        "PATCH",
        "/api/v1/users/ann",
        json!({"password": "Another-pass-1", "current_password": "User-pass-123"}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let r = as_ann("GET", "/api/v1/devices", json!(null))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a password change ends the old sessions");
    let ann = s.login("ann", "Another-pass-1").await;

    // The admin gives ann operator rights: her current token has them.
    let (st, v) = s
        .json(s.patch("/api/v1/users/ann", json!({"roles": ["operator"]})))
        .await;
    assert_eq!((st.as_u16(), &v["roles"]), (200, &json!(["operator"])));
    let r = s
        .http
        .patch(s.url("/api/v1/twins/nope"))
        .bearer_auth(&ann)
        .json(&json!([]))
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 403, "twins:write is effective at once");

    // Another tenant's admin cannot see ann.
    s.post("/api/v1/tenants", json!({"id": "other", "name": "Other"}))
        .send()
        .await
        .unwrap();
    s.post(
        "/api/v1/users",
        json!({"username": "otto", "password": "Otto-pass-123", "tenant": "other", "roles": ["tenant_admin"]}),
    )
    .send()
    .await
    .unwrap();
    let otto = s.login("otto", "Otto-pass-123").await;
    let r = s
        .http
        .delete(s.url("/api/v1/users/ann"))
        .bearer_auth(&otto)
        .send()
        .await
        .unwrap();
    error_of(r, 404, "not_found").await;

    let r = s.delete("/api/v1/users/ann").send().await.unwrap();
    assert_eq!(r.status(), 204);
    let r = s
        .http
        .get(s.url("/api/v1/devices"))
        .bearer_auth(&ann)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a deleted user's token stops working");
    let r = s.delete("/api/v1/users/admin").send().await.unwrap();
    error_of(r, 409, "conflict").await;
    s.stop().await;
}
