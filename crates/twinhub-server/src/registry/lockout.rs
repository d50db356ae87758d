//! Logins with lockout: failed attempts per name, persisted, answered alike for real and unknown names.

use super::*;

impl Registry {
    /// Checks a login. After `lockout_threshold` failures in a row the
    /// user name is locked for `lockout_s`, whether or not such a user
    /// exists (so locking reveals nothing).
    pub async fn login(&self, username: &str, pw: &str) -> Result<UserRow, LoginError> {
        let now = self.now_us();
        if let Some((_, Some(until))) = self.failures.lock().expect("failures").get(username) {
            if *until > now {
                return Err(LoginError::Locked(*until));
            }
        }
        match self.check_password(username, pw).await {
            Some(u) => {
                let had = self
                    .failures
                    .lock()
                    .expect("failures")
                    .remove(username)
                    .is_some();
                if had {
                    let name = username.to_string();
                    let _ = self
                        .store
                        .write(move |ctx| rows::set_login_failures(ctx.tx, &name, 0, None))
                        .await;
                }
                Ok(u)
            }
            None => {
                let (count, locked) = {
                    let mut f = self.failures.lock().expect("failures");
                    if f.len() > 100_000 {
                        f.retain(|_, (_, l)| l.is_some_and(|l| l > now));
                    }
                    let e = f.entry(username.to_string()).or_insert((0, None));
                    e.0 += 1;
                    if e.0 >= self.settings.lockout_threshold {
                        e.1 = Some(now + self.settings.lockout_s * 1_000_000);
                        e.0 = 0;
                    }
                    *e
                };
                // Only real accounts are persisted: unknown names would let anyone
                // grow the table; their lock lives in memory (bounded above).
                if self.users.read().expect("users").contains_key(username) {
                    let name = username.to_string();
                    let _ = self
                        .store
                        .write(move |ctx| {
                            rows::set_login_failures(ctx.tx, &name, count.max(1), locked)
                        })
                        .await;
                }
                Err(match locked {
                    Some(until) => LoginError::Locked(until),
                    None => LoginError::Bad,
                })
            }
        }
    }
}
